#pragma once
// Each subcommand of the strata CLI lives in its own file and registers itself here.
#include <CLI/CLI.hpp>

namespace strata::cli {

void register_info(CLI::App& app);
void register_inspect(CLI::App& app);
void register_engine(CLI::App& app);
void register_sweep(CLI::App& app);
void register_compress(CLI::App& app);
void register_kv(CLI::App& app);
void register_rotate(CLI::App& app);

}  // namespace strata::cli
