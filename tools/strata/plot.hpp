#pragma once
// gnuplot for the reports, run without a shell: the report directory is a user's path and may hold
// any character, so it never becomes part of a command line.
#include <filesystem>
#include <string>

namespace strata::cli {

// Whether an executable `gnuplot` is on PATH (looked up directly, as execvp would).
bool have_gnuplot();

// Runs `gnuplot script` with `dir` as the working directory (the script's relative file names are
// the report's), its stdout and stderr appended to dir/gnuplot.log. True when gnuplot ran and exited
// with status 0; false when it could not be started or failed (the log says why).
bool run_gnuplot(const std::filesystem::path& dir, const std::string& script);

}  // namespace strata::cli
