#pragma once
// llama.cpp on the same GGUF file, for the benchmarks that time strata against it: runs
// scripts/bench_llama_cpp.py with the python of scripts/install-llama-cpp.sh (no shell) and parses
// the one JSON object it prints.
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace strata::bench {

// The interpreter: STRATA_LLAMA_CPP_PYTHON, else the source tree's .cache/llama-cpp/bin/python.
inline std::string llama_cpp_python() {
  if (const char* env = std::getenv("STRATA_LLAMA_CPP_PYTHON")) return env;
  return std::string(STRATA_SOURCE_DIR) + "/.cache/llama-cpp/bin/python";
}

// The script's JSON for `args` (its options), or nullopt when the interpreter is missing or the
// run fails.
inline std::optional<nlohmann::json> run_llama_cpp(const std::string& python, std::vector<std::string> args) {
  const std::string script = std::string(STRATA_SOURCE_DIR) + "/scripts/bench_llama_cpp.py";
  if (python.empty() || access(python.c_str(), X_OK) != 0) return std::nullopt;
  int fds[2];
  if (pipe(fds) != 0) return std::nullopt;
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, fds[1], STDOUT_FILENO);
  posix_spawn_file_actions_addclose(&actions, fds[0]);
  args.insert(args.begin(), {python, script});
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid = 0;
  const int rc = posix_spawn(&pid, python.c_str(), &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  close(fds[1]);
  std::string out;
  char buf[4096];
  for (ssize_t n; rc == 0 && (n = read(fds[0], buf, sizeof buf)) > 0;) out.append(buf, static_cast<size_t>(n));
  close(fds[0]);
  int status = 0;
  if (rc != 0 || waitpid(pid, &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) return std::nullopt;
  try {
    return nlohmann::json::parse(out);
  } catch (const std::exception&) {
    return std::nullopt;
  }
}

}  // namespace strata::bench
