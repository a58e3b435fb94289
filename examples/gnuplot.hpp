// Runs gnuplot for the example programs' reports: no shell is involved, so report directories with
// any characters in their names are safe.
#pragma once

#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>
#include <string>

extern char** environ;

namespace strata::examples {

// `gnuplot SCRIPT` with `working_dir` as its current directory (the script's relative names resolve
// there), stdout and stderr into `log`. False when gnuplot is absent or fails.
inline bool run_gnuplot(const std::filesystem::path& working_dir, const std::filesystem::path& script,
                        const std::filesystem::path& log) {
  // Absolute before the spawn: its chdir would otherwise move relative paths.
  std::string script_path = std::filesystem::absolute(script).string();
  const std::string log_path = std::filesystem::absolute(log).string();
  const std::string dir = std::filesystem::absolute(working_dir).string();
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addchdir_np(&actions, dir.c_str());
  posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_adddup2(&actions, STDOUT_FILENO, STDERR_FILENO);
  char name[] = "gnuplot";
  char* argv[] = {name, script_path.data(), nullptr};
  pid_t pid = 0;
  const int rc = posix_spawnp(&pid, name, &actions, nullptr, argv, environ);
  posix_spawn_file_actions_destroy(&actions);
  if (rc != 0) return false;
  int status = 0;
  while (waitpid(pid, &status, 0) < 0)
    if (errno != EINTR) return false;
  return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

}  // namespace strata::examples
