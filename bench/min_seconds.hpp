#pragma once
// A console reporter that also keeps, per benchmark, the least wall and process CPU seconds per iteration over
// the repetitions, for the summaries the benchmarks print after their runs (ratios against a baseline timed
// in the same run).
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace strata::bench {

struct Seconds {
  double wall = INFINITY, cpu = INFINITY;
};

class MinSeconds : public benchmark::ConsoleReporter {
 public:
  // Benchmark name (without /real_time or /process_time) -> its least seconds per iteration.
  std::map<std::string, Seconds> seconds;

  void ReportRuns(const std::vector<Run>& runs) override {
    for (const auto& r : runs)
      if (r.run_type == Run::RT_Iteration && r.iterations > 0) {
        std::string name = r.benchmark_name();
        for (const char* suffix : {"/real_time", "/process_time"})
          if (name.ends_with(suffix)) name.resize(name.size() - std::strlen(suffix));
        auto& s = seconds[name];
        s.wall = std::min(s.wall, r.real_accumulated_time / static_cast<double>(r.iterations));
        s.cpu = std::min(s.cpu, r.cpu_accumulated_time / static_cast<double>(r.iterations));
      }
    ConsoleReporter::ReportRuns(runs);
  }
};

// benchmark::Initialize on `args` (what the program's own flags left), every benchmark registered, then
// Shutdown; returns the least seconds per benchmark.
inline std::map<std::string, Seconds> run_benchmarks(std::vector<char*>& args) {
  int argc = static_cast<int>(args.size());
  benchmark::Initialize(&argc, args.data());
  MinSeconds reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter);
  benchmark::Shutdown();
  return std::move(reporter.seconds);
}

}  // namespace strata::bench
