#pragma once
// A one-line progress bar with elapsed time and ETA on stderr (only when stderr is a terminal or
// STRATA_PROGRESS=1; otherwise a line every 10% so that logs stay short).
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

namespace strata::cli {

class Progress {
 public:
  Progress(std::string what, int64_t total)
      : what_(std::move(what)), total_(total), start_(std::chrono::steady_clock::now()) {
    const char* env = std::getenv("STRATA_PROGRESS");
    live_ = env ? std::string(env) == "1" : isatty(STDERR_FILENO) != 0;
  }
  void update(int64_t done) {
    const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    const double eta = done > 0 ? elapsed * static_cast<double>(total_ - done) / static_cast<double>(done) : 0.0;
    const int pct = total_ > 0 ? static_cast<int>(100 * done / total_) : 100;
    if (!live_ && pct / 10 == last_decile_ && done != total_) return;
    last_decile_ = pct / 10;
    char bar[21];
    for (int i = 0; i < 20; ++i) bar[i] = i < pct / 5 ? '#' : '.';
    bar[20] = '\0';
    std::fprintf(stderr, "%s%s [%s] %lld/%lld  %.1fs elapsed, ETA %.1fs%s", live_ ? "\r" : "", what_.c_str(), bar,
                 static_cast<long long>(done), static_cast<long long>(total_), elapsed, eta,
                 live_ && done != total_ ? "" : "\n");
    std::fflush(stderr);
  }

 private:
  std::string what_;
  int64_t total_;
  std::chrono::steady_clock::time_point start_;
  bool live_ = false;
  int last_decile_ = -1;
};

// A progress callback for the library's pipeline stages: one bar per stage, in the order they run.
inline auto stage_bars() {
  struct Bars {
    std::string stage;
    std::optional<Progress> bar;
  };
  auto bars = std::make_shared<Bars>();
  return [bars](std::string_view stage, int64_t done, int64_t total) {
    if (!bars->bar || stage != bars->stage) {
      bars->stage = std::string(stage);
      bars->bar.emplace(bars->stage, total);
    }
    bars->bar->update(done);
  };
}

}  // namespace strata::cli
