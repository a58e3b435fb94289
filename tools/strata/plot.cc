#include "plot.hpp"

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <string_view>

namespace strata::cli {

bool have_gnuplot() {
  const char* path = std::getenv("PATH");
  std::string_view dirs = path != nullptr ? path : "/usr/bin:/bin";
  while (true) {
    const size_t colon = dirs.find(':');
    const std::string_view dir = dirs.substr(0, colon);
    // An empty PATH entry is the working directory, as for execvp.
    const std::filesystem::path exe = std::filesystem::path(dir.empty() ? "." : std::string(dir)) / "gnuplot";
    std::error_code ec;
    if (std::filesystem::is_regular_file(exe, ec) && ::access(exe.c_str(), X_OK) == 0) return true;
    if (colon == std::string_view::npos) return false;
    dirs.remove_prefix(colon + 1);
  }
}

bool run_gnuplot(const std::filesystem::path& dir, const std::string& script) {
  const int log = ::open((dir / "gnuplot.log").c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (log < 0) return false;
  const pid_t pid = ::fork();
  if (pid == 0) {
    // The child only calls async-signal-safe functions before exec.
    if (::chdir(dir.c_str()) != 0 || ::dup2(log, STDOUT_FILENO) < 0 || ::dup2(log, STDERR_FILENO) < 0) _exit(127);
    char name[] = "gnuplot";
    char* argv[] = {name, const_cast<char*>(script.c_str()), nullptr};
    ::execvp(name, argv);
    const char msg[] = "gnuplot could not be started\n";
    [[maybe_unused]] const auto n = ::write(STDERR_FILENO, msg, sizeof msg - 1);
    _exit(127);
  }
  ::close(log);
  if (pid < 0) return false;
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0)
    if (errno != EINTR) return false;
  return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

}  // namespace strata::cli
