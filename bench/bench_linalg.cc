// bench_linalg: what low-rank compression of a layer costs with each SVD strata could use, and what the
// OpenBLAS kernel choice does to it.
//
//  1. Full thin SVD with LAPACK sgesdd, randomized SVD (rank 64, p = 10, q = 2) and Eigen's BDCSVD on
//     768 x 768, 768 x 3072 and 4096 x 4096 float matrices with singular values 1/sqrt(i+1). BDCSVD
//     runs on the two smaller sizes only: on 4096 x 4096 it takes minutes here. After the runs, a
//     summary gives each method's time, how much faster rsvd is than gesdd, and rsvd's rank-64 error
//     over the optimal rank-64 error (from the gesdd singular values of the same run).
//  2. sgemm GFLOP/s (2048 x 2048) with the kernels this process runs, with OpenBLAS's SSE3 "Prescott"
//     kernels (a child process of this binary started with OPENBLAS_CORETYPE=Prescott, which is what
//     Debian's OpenBLAS 0.3.21 picks on CPUs it does not recognise), and with Eigen's own GEMM.
//
// Usage: bench_linalg [Google Benchmark flags]. bench_linalg --sgemm-probe only prints one sgemm
// measurement (used for the child process).
#include <benchmark/benchmark.h>
#include <cblas.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <Eigen/SVD>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "strata/core/blas.hpp"
#include "strata/linalg/svd.hpp"

extern char** environ;

namespace {

using strata::Matrix;
using strata::Vector;
using Clock = std::chrono::steady_clock;

constexpr int64_t kRank = 64;
constexpr int64_t kGemmSize = 2048;
constexpr int kGemmReps = 3;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// ------------------------------------------------------------------------------------------- SVDs

struct Case {
  int64_t m, n;
  bool run_bdcsvd;
};
constexpr Case kCases[] = {{768, 768, true}, {768, 3072, true}, {4096, 4096, false}};

std::string case_name(const Case& c) { return std::to_string(c.m) + "x" + std::to_string(c.n); }

Vector<float> decaying_spectrum(int64_t k) {
  Vector<float> s(k);
  for (int64_t i = 0; i < k; ++i) s(i) = static_cast<float>(1.0 / std::sqrt(static_cast<double>(i + 1)));
  return s;
}

// Built once per size: Google Benchmark calls a benchmark function several times while it sizes
// the iteration count.
const Matrix<float>& test_matrix(const Case& c) {
  static std::map<std::pair<int64_t, int64_t>, Matrix<float>> cache;
  auto [it, inserted] = cache.try_emplace({c.m, c.n});
  if (inserted)
    it->second = strata::linalg::matrix_with_singular_values<float>(c.m, c.n, decaying_spectrum(std::min(c.m, c.n)),
                                                                    static_cast<uint64_t>(c.m * 7919 + c.n));
  return it->second;
}

// What the summary needs from the runs, per size. Times are the mean per iteration of the final run
// of each benchmark (the one Google Benchmark reports).
struct Measured {
  std::optional<double> gesdd_s, rsvd_s, bdcsvd_s;
  std::optional<double> optimal_error;  // sqrt(sum_{i >= r} s_i^2) from gesdd's singular values
  std::optional<double> rsvd_error;     // ||A - U S V^T||_F of the rank-r randomized SVD
  std::optional<double> bdcsvd_max_sv_diff;  // max |s_i(BDCSVD) - s_i(gesdd)|, a sanity check
  Vector<float> gesdd_s_values;
};
std::map<std::string, Measured> g_measured;

template <class Fn>
double timed_loop(benchmark::State& state, Fn&& fn) {
  double total = 0;
  int64_t iters = 0;
  for (auto _ : state) {
    const auto t0 = Clock::now();
    fn();
    total += seconds_since(t0);
    ++iters;
  }
  return iters ? total / static_cast<double>(iters) : 0.0;
}

void bm_gesdd(benchmark::State& state, Case c) {
  const Matrix<float>& a = test_matrix(c);
  strata::linalg::SvdResult<float> r;
  const double t = timed_loop(state, [&] {
    r = strata::linalg::svd(a, {.driver = strata::linalg::SvdDriver::gesdd});
    benchmark::DoNotOptimize(r.S.data());
  });
  Measured& m = g_measured[case_name(c)];
  m.gesdd_s = t;
  m.gesdd_s_values = r.S;
  m.optimal_error = std::sqrt(r.S.tail(r.S.size() - kRank).cast<double>().squaredNorm());
}

void bm_rsvd(benchmark::State& state, Case c) {
  const Matrix<float>& a = test_matrix(c);
  strata::linalg::SvdResult<float> r;
  const strata::linalg::RandomizedSvdOptions opt{.rank = kRank, .oversampling = 10, .power_iterations = 2, .seed = 1};
  const double t = timed_loop(state, [&] {
    r = strata::linalg::randomized_svd(a, opt);
    benchmark::DoNotOptimize(r.S.data());
  });
  Measured& m = g_measured[case_name(c)];
  m.rsvd_s = t;
  const Matrix<float> rec = r.U * r.S.asDiagonal() * r.V.transpose();
  m.rsvd_error = static_cast<double>((a - rec).norm());
  if (m.optimal_error) state.counters["err_vs_opt"] = *m.rsvd_error / *m.optimal_error;
}

void bm_bdcsvd(benchmark::State& state, Case c) {
  const Matrix<float>& a = test_matrix(c);
  Vector<float> s;
  const double t = timed_loop(state, [&] {
    Eigen::BDCSVD<Matrix<float>> svd(a, Eigen::ComputeThinU | Eigen::ComputeThinV);
    s = svd.singularValues();
    benchmark::DoNotOptimize(s.data());
  });
  Measured& m = g_measured[case_name(c)];
  m.bdcsvd_s = t;
  if (m.gesdd_s_values.size() == s.size())
    m.bdcsvd_max_sv_diff = static_cast<double>((s - m.gesdd_s_values).cwiseAbs().maxCoeff());
}

// gesdd from 768 x 3072 up and BDCSVD take a second or more per call: they are measured once, as their
// spread is small next to the ratios this benchmark is about, and the whole run has to stay short.
void register_svd_benchmarks() {
  for (const Case& c : kCases) {
    auto* gesdd = benchmark::RegisterBenchmark(("svd/gesdd/" + case_name(c)).c_str(), bm_gesdd, c);
    gesdd->Unit(benchmark::kMillisecond)->UseRealTime();
    if (c.m * c.n >= 768 * 3072) gesdd->Iterations(1);
    // A few repetitions of rsvd even on the largest size, where one call lasts longer than the
    // default minimum time: its time is the denominator of the headline ratio.
    benchmark::RegisterBenchmark(("svd/rsvd_r64/" + case_name(c)).c_str(), bm_rsvd, c)
        ->Unit(benchmark::kMillisecond)
        ->UseRealTime()
        ->MinTime(2.0);
    if (c.run_bdcsvd)
      benchmark::RegisterBenchmark(("svd/eigen_bdcsvd/" + case_name(c)).c_str(), bm_bdcsvd, c)
          ->Unit(benchmark::kMillisecond)
          ->UseRealTime()
          ->Iterations(1);
  }
}

// ------------------------------------------------------------------------------------------ sgemm

double gflops(double seconds) {
  const double n = static_cast<double>(kGemmSize);
  return 2 * n * n * n / seconds / 1e9;
}

// Best of kGemmReps after one warm-up call: the machine is shared, the best run is the least disturbed.
template <class Fn>
double best_gemm_gflops(Fn&& gemm) {
  gemm();
  double best = 1e30;
  for (int rep = 0; rep < kGemmReps; ++rep) {
    const auto t0 = Clock::now();
    gemm();
    best = std::min(best, seconds_since(t0));
  }
  return gflops(best);
}

double openblas_sgemm_gflops() {
  const Matrix<float> a = Matrix<float>::Random(kGemmSize, kGemmSize), b = Matrix<float>::Random(kGemmSize, kGemmSize);
  Matrix<float> c(kGemmSize, kGemmSize);
  const int n = static_cast<int>(kGemmSize);
  return best_gemm_gflops([&] {
    cblas_sgemm(CblasColMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a.data(), n, b.data(), n, 0.0f, c.data(), n);
    benchmark::DoNotOptimize(c.data());
  });
}

double eigen_sgemm_gflops() {
  const Matrix<float> a = Matrix<float>::Random(kGemmSize, kGemmSize), b = Matrix<float>::Random(kGemmSize, kGemmSize);
  Matrix<float> c(kGemmSize, kGemmSize);
  return best_gemm_gflops([&] {
    c.noalias() = a * b;
    benchmark::DoNotOptimize(c.data());
  });
}

// The child's side: one line, "<GFLOP/s> <kernel name>".
int sgemm_probe() {
  const double g = openblas_sgemm_gflops();
  std::printf("%.2f %s\n", g, strata::blas_info().core.c_str());
  return 0;
}

struct ProbeResult {
  double gflops = 0;
  std::string core;
  std::string error;  // set when the child could not be run
};

// Runs this binary again as `--sgemm-probe` with OPENBLAS_CORETYPE=Prescott: OpenBLAS reads that
// variable once, when it is loaded, so another process is the only way to measure other kernels.
ProbeResult run_prescott_probe() {
  ProbeResult out;
  std::vector<char> self(4096);
  const ssize_t len = readlink("/proc/self/exe", self.data(), self.size() - 1);
  if (len <= 0) return {0, "", "cannot read /proc/self/exe"};
  self[static_cast<std::size_t>(len)] = '\0';

  std::vector<std::string> env_strings;
  for (char** e = environ; *e; ++e) {
    const std::string_view kv(*e);
    if (kv.starts_with("OPENBLAS_CORETYPE=") || kv.starts_with("STRATA_BLAS_AUTOFIX=") ||
        kv.starts_with("STRATA_BLAS_REEXEC="))
      continue;
    env_strings.emplace_back(kv);
  }
  env_strings.emplace_back("OPENBLAS_CORETYPE=Prescott");
  env_strings.emplace_back("STRATA_BLAS_AUTOFIX=0");  // or ensure_fast_blas would undo the emulation
  std::vector<char*> envp;
  for (auto& s : env_strings) envp.push_back(s.data());
  envp.push_back(nullptr);
  std::string flag = "--sgemm-probe";
  char* argv[] = {self.data(), flag.data(), nullptr};

  int fds[2];
  if (pipe(fds) != 0) return {0, "", std::string("pipe: ") + std::strerror(errno)};
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, fds[1], STDOUT_FILENO);
  posix_spawn_file_actions_addclose(&actions, fds[0]);
  pid_t pid = 0;
  const int rc = posix_spawn(&pid, self.data(), &actions, nullptr, argv, envp.data());
  posix_spawn_file_actions_destroy(&actions);
  close(fds[1]);
  if (rc != 0) {
    close(fds[0]);
    return {0, "", std::string("posix_spawn: ") + std::strerror(rc)};
  }
  std::string text;
  char buf[256];
  for (ssize_t got; (got = read(fds[0], buf, sizeof buf)) > 0;) text.append(buf, static_cast<std::size_t>(got));
  close(fds[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) return {0, "", "probe process failed: " + text};
  char core[64] = {};
  if (std::sscanf(text.c_str(), "%lf %63s", &out.gflops, core) != 2) return {0, "", "unreadable probe output: " + text};
  out.core = core;
  return out;
}

// ---------------------------------------------------------------------------------------- summary

std::string seconds_text(const std::optional<double>& s) {
  if (!s) return "-";
  char buf[32];
  std::snprintf(buf, sizeof buf, *s < 1 ? "%.3f s" : "%.2f s", *s);
  return buf;
}

void print_svd_summary() {
  std::printf("\nSVD summary (float, singular values 1/sqrt(i+1), rank %lld for rsvd, p = 10, q = 2)\n",
              static_cast<long long>(kRank));
  std::printf("%-11s %10s %10s %12s %16s %16s %22s\n", "size", "gesdd", "rsvd", "eigen BDCSVD", "rsvd vs gesdd",
              "BDCSVD vs gesdd", "rsvd err / optimal err");
  for (const Case& c : kCases) {
    const auto found = g_measured.find(case_name(c));
    if (found == g_measured.end()) continue;
    const Measured& m = found->second;
    char speed[32] = "-", bdc_ratio[32] = "-", err[32] = "-";
    if (m.gesdd_s && m.rsvd_s) std::snprintf(speed, sizeof speed, "%.1fx faster", *m.gesdd_s / *m.rsvd_s);
    if (m.gesdd_s && m.bdcsvd_s) std::snprintf(bdc_ratio, sizeof bdc_ratio, "%.1fx slower", *m.bdcsvd_s / *m.gesdd_s);
    if (m.rsvd_error && m.optimal_error) std::snprintf(err, sizeof err, "%.4f", *m.rsvd_error / *m.optimal_error);
    const std::string bdc = c.run_bdcsvd ? seconds_text(m.bdcsvd_s) : "not run";
    std::printf("%-11s %10s %10s %12s %16s %16s %22s\n", case_name(c).c_str(), seconds_text(m.gesdd_s).c_str(),
                seconds_text(m.rsvd_s).c_str(), bdc.c_str(), speed, bdc_ratio, err);
  }
  for (const Case& c : kCases) {
    const auto found = g_measured.find(case_name(c));
    if (found == g_measured.end()) continue;
    const Measured& m = found->second;
    if (m.gesdd_s && m.rsvd_s)
      std::printf("%s: rsvd is %.1fx faster than gesdd", case_name(c).c_str(), *m.gesdd_s / *m.rsvd_s);
    if (m.rsvd_error && m.optimal_error)
      std::printf(", its rank-%lld error is %.4fx the optimal one", static_cast<long long>(kRank),
                  *m.rsvd_error / *m.optimal_error);
    if (m.bdcsvd_max_sv_diff) std::printf("; BDCSVD singular values match gesdd's to %.1e", *m.bdcsvd_max_sv_diff);
    std::printf("\n");
  }
  std::printf("Eigen BDCSVD is not run on 4096x4096: it takes minutes there.\n");
  const auto big = g_measured.find("4096x4096");
  if (big != g_measured.end() && big->second.gesdd_s && big->second.rsvd_s && big->second.rsvd_error &&
      big->second.optimal_error) {
    const double speedup = *big->second.gesdd_s / *big->second.rsvd_s;
    const double ratio = *big->second.rsvd_error / *big->second.optimal_error;
    std::printf("Target on 4096x4096 (rsvd >= 30x faster than gesdd, error <= 1.01x optimal): %s (%.1fx, %.4fx)\n",
                speedup >= 30 && ratio <= 1.01 ? "met" : "NOT met", speedup, ratio);
  }
}

void print_sgemm_summary(const strata::BlasInfo& info, double own, double eigen, const ProbeResult& prescott) {
  std::printf("\nBLAS: %s\n", info.describe().c_str());
  std::printf("sgemm %lldx%lld, best of %d, %d BLAS threads: ", static_cast<long long>(kGemmSize),
              static_cast<long long>(kGemmSize), kGemmReps, info.threads);
  if (prescott.error.empty())
    std::printf("%s kernels %.1f GFLOP/s, %s kernels %.1f GFLOP/s (%.1fx), Eigen %.1f GFLOP/s\n",
                prescott.core.c_str(), prescott.gflops, info.core.c_str(), own, own / prescott.gflops, eigen);
  else
    std::printf("%s kernels %.1f GFLOP/s, Eigen %.1f GFLOP/s (Prescott probe failed: %s)\n", info.core.c_str(), own,
                eigen, prescott.error.c_str());
  if (std::getenv("STRATA_BLAS_REEXEC"))
    std::printf("OpenBLAS misdetected this CPU; ensure_fast_blas re-executed the benchmark with "
                "OPENBLAS_CORETYPE=%s. The %s figure is what the program would have run without it.\n",
                info.core.c_str(), prescott.core.empty() ? "Prescott" : prescott.core.c_str());
  else if (!info.coretype_from_env)
    std::printf("OpenBLAS detected this CPU's kernels (%s) by itself; the Prescott figure emulates the "
                "misdetection of Debian's OpenBLAS 0.3.21 on Emerald Rapids (a child process run with "
                "OPENBLAS_CORETYPE=Prescott).\n",
                info.core.c_str());
  else
    std::printf("OPENBLAS_CORETYPE was set by the caller; the Prescott figure emulates the misdetection of "
                "Debian's OpenBLAS 0.3.21 on Emerald Rapids (a child process run with OPENBLAS_CORETYPE=Prescott).\n");
}

}  // namespace

int main(int argc, char** argv) {
  strata::ensure_fast_blas(argc, argv);
  if (argc == 2 && std::strcmp(argv[1], "--sgemm-probe") == 0) return sgemm_probe();

  const strata::BlasInfo info = strata::blas_info();
  std::printf("BLAS: %s\n", info.describe().c_str());
  std::fflush(stdout);

  register_svd_benchmarks();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();

  // After the SVDs, so that the probe's child process never competes with a timed run.
  const double own = openblas_sgemm_gflops();
  const double eigen = eigen_sgemm_gflops();
  const ProbeResult prescott = run_prescott_probe();

  print_svd_summary();
  print_sgemm_summary(info, own, eigen, prescott);
  return 0;
}
