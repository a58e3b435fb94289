#pragma once
// The report `strata compress` writes: Markdown and JSON summaries, the per-tensor table, and two
// plots rendered by gnuplot (per-layer allocation bars; KL vs bits per weight, uniform vs allocated).
#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace strata::cli {

struct VariantResult {
  std::string label;  // "uniform quant.ggml:q3_k", "allocated (greedy)", ...
  double bytes = 0, bits_per_weight = 0;
  double perplexity = 0, mean_kl = 0, p99_kl = 0, top1 = 0;
  double predicted_error = 0;  // the plan's total error proxy
};

struct TensorRow {
  std::string tensor, method, knob;
  double bytes = 0, bits_per_weight = 0;
  double predicted_error = 0;  // relative output error on the calibration inputs
  double measured_error = 0;   // the same on held-out evaluation inputs (NaN when not measured)
};

struct CurvePoint {
  std::string like;  // the uniform request this point is sized by
  double uniform_bpw = 0, uniform_kl = 0, allocated_bpw = 0, allocated_kl = 0;
};

struct Report {
  std::string model, recipe, solver, budget, output, calibration, evaluation;
  uint64_t output_bytes = 0;
  int64_t params = 0;  // weights of the tensors the plan covers
  double dense_perplexity = 0;
  std::vector<VariantResult> variants;  // the first is the written plan
  std::vector<TensorRow> tensors;
  std::vector<CurvePoint> curve;
  nlohmann::json evolve = nullptr;  // start/best fitness, evaluations, history
  std::vector<std::pair<std::string, double>> seconds;  // step timings
  uint64_t peak_resident_bytes = 0;                     // of the whole run, as the system counts it
  std::vector<std::string> notes;
};

std::string summary_markdown(const Report& r);
nlohmann::json to_json(const Report& r);
// report.md, report.json, allocation.png, rate_distortion.png (and the .dat/.gp files gnuplot ran on)
// under `dir`. Without gnuplot the plots are skipped with a note in the report, never a failure.
void write_report(const Report& r, const std::filesystem::path& dir);

}  // namespace strata::cli
