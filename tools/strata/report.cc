#include "report.hpp"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <sstream>

#include "plot.hpp"
#include "strata/core/error.hpp"
#include "strata/io/mapped_file.hpp"

namespace strata::cli {

namespace {

void write_text(const std::filesystem::path& path, const std::string& text) {
  io::AtomicFileWriter w(path);
  w.write(text.data(), text.size());
  w.commit();
}

std::string fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

std::string mib(double bytes) { return fmt("%.2f", bytes / (1024.0 * 1024.0)); }

// Which of a block's linear layers a tensor is, for the bar colours.
int slot_of(const std::string& tensor) {
  static const char* kinds[] = {"attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"};
  for (int i = 0; i < 7; ++i)
    if (tensor.find(kinds[i]) != std::string::npos) return i + 1;
  return 8;
}

}  // namespace

std::string summary_markdown(const Report& r) {
  std::ostringstream o;
  o << "## strata compress: " << r.model << "\n\n";
  o << "- recipe: " << r.recipe << "; solver: " << r.solver << "; budget: " << r.budget << "\n";
  o << "- calibration: " << r.calibration << "\n";
  o << "- evaluation: " << r.evaluation << "\n";
  if (!r.output.empty())
    o << "- output: " << r.output << " (" << mib(static_cast<double>(r.output_bytes)) << " MiB on disk)\n";
  o << "- dense perplexity: " << fmt("%.3f", r.dense_perplexity) << "\n\n";
  o << "| model | MiB (planned tensors) | bits/weight | perplexity | KL mean | KL p99 | top-1 | predicted error |\n";
  o << "|---|---|---|---|---|---|---|---|\n";
  for (const auto& v : r.variants)
    o << "| " << v.label << " | " << mib(v.bytes) << " | " << fmt("%.3f", v.bits_per_weight) << " | "
      << fmt("%.3f", v.perplexity) << " | " << fmt("%.5f", v.mean_kl) << " | " << fmt("%.4f", v.p99_kl) << " | "
      << fmt("%.2f%%", 100 * v.top1) << " | " << fmt("%.4g", v.predicted_error) << " |\n";
  if (!r.curve.empty()) {
    o << "\nRate-distortion (KL at the size of each uniform request):\n\n";
    o << "| size of | uniform bits/weight | uniform KL | allocated bits/weight | allocated KL | ratio |\n";
    o << "|---|---|---|---|---|---|\n";
    for (const auto& c : r.curve)
      o << "| " << c.like << " | " << fmt("%.3f", c.uniform_bpw) << " | " << fmt("%.5f", c.uniform_kl) << " | "
        << fmt("%.3f", c.allocated_bpw) << " | " << fmt("%.5f", c.allocated_kl) << " | "
        << fmt("%.3f", c.uniform_kl > 0 ? c.allocated_kl / c.uniform_kl : NAN) << " |\n";
  }
  if (!r.evolve.is_null()) {
    o << "\nEvolutionary search: KL on the probe " << fmt("%.5f", r.evolve.value("start_fitness", 0.0)) << " -> "
      << fmt("%.5f", r.evolve.value("best_fitness", 0.0)) << " after " << r.evolve.value("evaluations", 0)
      << " evaluations\n";
  }
  for (const auto& n : r.notes) o << "\nNote: " << n << "\n";
  return o.str();
}

nlohmann::json to_json(const Report& r) {
  nlohmann::json j;
  j["model"] = r.model;
  j["recipe"] = r.recipe;
  j["solver"] = r.solver;
  j["budget"] = r.budget;
  j["calibration"] = r.calibration;
  j["evaluation"] = r.evaluation;
  j["output"] = r.output;
  j["output_bytes"] = r.output_bytes;
  j["params"] = r.params;
  j["dense_perplexity"] = r.dense_perplexity;
  for (const auto& v : r.variants)
    j["variants"].push_back({{"label", v.label}, {"bytes", v.bytes}, {"bits_per_weight", v.bits_per_weight},
                             {"perplexity", v.perplexity}, {"mean_kl", v.mean_kl}, {"p99_kl", v.p99_kl},
                             {"top1", v.top1}, {"predicted_error", v.predicted_error}});
  for (const auto& t : r.tensors)
    j["tensors"].push_back({{"tensor", t.tensor}, {"method", t.method}, {"knob", t.knob}, {"bytes", t.bytes},
                            {"bits_per_weight", t.bits_per_weight}, {"predicted_error", t.predicted_error},
                            {"measured_error", std::isfinite(t.measured_error) ? nlohmann::json(t.measured_error)
                                                                               : nlohmann::json(nullptr)}});
  for (const auto& c : r.curve)
    j["curve"].push_back({{"like", c.like}, {"uniform_bpw", c.uniform_bpw}, {"uniform_kl", c.uniform_kl},
                          {"allocated_bpw", c.allocated_bpw}, {"allocated_kl", c.allocated_kl}});
  j["evolve"] = r.evolve;
  for (const auto& [k, s] : r.seconds) j["seconds"][k] = s;
  j["peak_resident_bytes"] = r.peak_resident_bytes;
  j["notes"] = r.notes;
  return j;
}

void write_report(const Report& r, const std::filesystem::path& dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  require(!ec, dir.string(), ": cannot create the report directory: ", ec.message());
  Report out = r;

  std::ostringstream alloc;
  alloc << "# index bits_per_weight slot tensor method:knob\n";
  for (size_t i = 0; i < r.tensors.size(); ++i)
    alloc << i << ' ' << r.tensors[i].bits_per_weight << ' ' << slot_of(r.tensors[i].tensor) << ' '
          << r.tensors[i].tensor << ' ' << r.tensors[i].method << ':' << r.tensors[i].knob << '\n';
  write_text(dir / "allocation.dat", alloc.str());
  std::ostringstream curve;
  curve << "# like uniform_bpw uniform_kl allocated_bpw allocated_kl\n";
  for (const auto& c : r.curve)
    curve << c.like << ' ' << c.uniform_bpw << ' ' << c.uniform_kl << ' ' << c.allocated_bpw << ' ' << c.allocated_kl
          << '\n';
  write_text(dir / "rate_distortion.dat", curve.str());

  const std::string gp =
      "set terminal pngcairo size 1400,500 font 'sans,10' noenhanced\n"
      "set output 'allocation.png'\n"
      "set title 'bits per weight chosen for each tensor (colour: attn_q k v output, ffn_gate up down)'\n"
      "set xlabel 'tensor (forward order)'\nset ylabel 'bits per weight'\n"
      "set style fill solid 0.8 noborder\nset boxwidth 0.8\nset xrange [-1:*]\nset yrange [0:9]\nunset key\n"
      "plot 'allocation.dat' using 1:2:3 with boxes lc variable\n"
      "set terminal pngcairo size 800,600 font 'sans,10' noenhanced\n"
      "set output 'rate_distortion.png'\n"
      "set title 'KL divergence to the dense model vs size'\n"
      "set xlabel 'bits per weight (planned tensors)'\nset ylabel 'mean KL (nats/token)'\n"
      "set logscale y\nset key top right\nset autoscale\nset offsets graph 0.05, graph 0.05, 0, 0\n"
      "plot 'rate_distortion.dat' using 2:3 with linespoints pt 7 title 'uniform', "
      "'' using 4:5 with linespoints pt 5 title 'allocated'\n";
  write_text(dir / "plots.gp", gp);
  if (!have_gnuplot()) {
    out.notes.push_back("gnuplot is not installed: plots not rendered (data and script are in the report directory)");
  } else if (r.curve.empty()) {
    out.notes.push_back("no rate-distortion points were measured; rate_distortion.png may be empty");
  }
  if (have_gnuplot()) {
    if (!run_gnuplot(dir, "plots.gp")) out.notes.push_back("gnuplot failed; see gnuplot.log in the report directory");
  }

  std::ostringstream md;
  md << summary_markdown(out);
  md << "\n![allocation](allocation.png)\n\n![rate-distortion](rate_distortion.png)\n";
  md << "\n### Per tensor\n\nPredicted error: relative output error ||(W - W')X||^2 / ||WX||^2 on the calibration "
        "inputs; measured: the same on held-out evaluation inputs.\n\n";
  md << "| tensor | method:knob | bits/weight | predicted error | measured error |\n|---|---|---|---|---|\n";
  for (const auto& t : r.tensors)
    md << "| " << t.tensor << " | " << t.method << ':' << t.knob << " | " << fmt("%.3f", t.bits_per_weight) << " | "
       << fmt("%.4g", t.predicted_error) << " | " << fmt("%.4g", t.measured_error) << " |\n";
  if (!r.seconds.empty()) {
    md << "\n### Time\n\n| step | seconds |\n|---|---|\n";
    for (const auto& [k, s] : r.seconds) md << "| " << k << " | " << fmt("%.1f", s) << " |\n";
    if (r.peak_resident_bytes > 0)
      md << "\nPeak resident memory: " << fmt("%.2f", static_cast<double>(r.peak_resident_bytes) / (1u << 30))
         << " GiB\n";
  }
  write_text(dir / "report.md", md.str());
  write_text(dir / "report.json", to_json(out).dump(2) + "\n");
}

}  // namespace strata::cli
