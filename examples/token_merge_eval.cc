// Token merging (ToMe) and attention-score pruning (EViT-style) on all-MiniLM-L6-v2 over real passages: at
// several token-reduction rates, the cosine of each passage's embedding to its dense embedding,
// nearest-neighbour agreement among the passages, the encoder's FLOPs and wall time. Schedules: constant,
// decreasing, per-layer rates from the budget allocator on sensitivity measured on a tuning slice (disjoint
// from the report slice) at the constant schedule's FLOPs, a schedule searched on the tuning slice under a
// FLOPs cap, explicit schedules, and merge-compute-unmerge rows. Each row's pooled embedding may be corrected
// toward the dense one (token::EmbeddingCorrection: a mean shift or a ridge affine map, fitted per row on
// calibration passages disjoint from every report slice), and a second corpus (State of the Union addresses)
// is reported beside Moby-Dick, alone and pooled with it.
//
//   token_merge_eval --report /tmp/tome     (docs/token-merging.md shows the figures)

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <numeric>
#include <optional>

#include "gnuplot.hpp"
#include "real_data_args.hpp"
#include "strata/core/blas.hpp"
#include "strata/core/parallel.hpp"
#include "strata/nn/bert.hpp"
#include "strata/nn/passages.hpp"
#include "strata/token/correction.hpp"
#include "strata/token/merge.hpp"
#include "strata/token/schedule.hpp"


namespace {

using namespace strata;
namespace ex = strata::examples;

struct Args {
  std::filesystem::path model = ex::data_paths().models / "all-minilm-l6-v2";
  std::filesystem::path text = ex::data_paths().moby_dick();
  std::string tune_slice = ex::kTuningSlice, report_slice = ex::kReportSlice;
  int64_t min_tokens = 64, max_words = 120, tune_passages = 24, report_passages = 120, batch = 32, repeats = 2;
  std::vector<double> rates = {0.25, 0.5, 0.75};
  std::vector<std::string> methods = {"merge", "prune"};
  bool allocator = true;
  // The searched schedule: measured whole-schedule loss on the tuning slice, FLOPs within search_flops.
  double search_flops = 0.7, search_step = 0.025;
  // Explicit merge schedules, one row each: per-layer fractions separated by '/' (0.05/0.2/0.15/0.1/0/0).
  std::vector<std::string> schedules;
  // Merge, compute, unmerge: "ATTENTION:MLP" fractions merged in each layer from unmerge_from on.
  std::vector<std::string> unmerge;
  int64_t unmerge_from = 0;
  std::vector<double> fractions = {0.05, 0.1, 0.2, 0.3};
  // Chosen on the tuning slice (docs/token-merging.md): hidden states matched better than keys there.
  // Greedy pairs matched better than the bipartite matching there (mean cosine at 25% and 50%).
  std::string metric = "hidden", matching = "greedy";
  bool center = false, protect_last = false;
  double size_penalty = 0;
  std::filesystem::path report;
  // The second report corpus (empty slice: none) and the calibration passages the corrections are fitted on
  // (empty slices: no correction), each slice disjoint from both report slices.
  std::filesystem::path second_text = ex::data_paths().sotu();
  std::string second_slice = "0.9:0.92", fit_slice = "0.8:1.0", fit_second_slice = "0.5:0.6";
  int64_t second_passages = 120, second_stride = 1, fit_passages = 400;
  // Chosen on held-out calibration pairs (docs/token-merging.md): the held-out cosine peaked inside this range.
  std::vector<double> ridges = {0.01, 0.1, 1, 10, 100};

  void add_options(CLI::App& app) {
    app.add_option("--model", model,
                   "all-MiniLM-L6-v2 folder (model.safetensors, config.json, "
                   "vocab.txt)")
        ->check(CLI::ExistingDirectory)
        ->capture_default_str();
    app.add_option("--text", text, "corpus the passages come from")->check(CLI::ExistingFile)->capture_default_str();
    app.add_option("--tune-slice", tune_slice, "slice BEGIN:END the allocator's sensitivity is measured on")
        ->capture_default_str();
    app.add_option("--report-slice", report_slice, "slice BEGIN:END the figures are measured on (disjoint)")
        ->capture_default_str();
    app.add_option("--min-tokens", min_tokens, "shortest passage kept, in WordPiece tokens with [CLS] and [SEP]")
        ->check(CLI::PositiveNumber)
        ->capture_default_str();
    app.add_option("--max-words", max_words, "passages are whole sentences of a paragraph up to this many words")
        ->check(CLI::PositiveNumber)
        ->capture_default_str();
    app.add_option("--tune-passages", tune_passages, "passages of the tuning slice")
        ->check(CLI::PositiveNumber)
        ->capture_default_str();
    app.add_option("--report-passages", report_passages, "passages of the report slice")
        ->check(CLI::PositiveNumber)
        ->capture_default_str();
    app.add_option("--batch", batch, "passages per encoder call")->check(CLI::PositiveNumber)->capture_default_str();
    app.add_option("--repeats", repeats, "timed runs per configuration (the fastest counts)")
        ->check(CLI::PositiveNumber)
        ->capture_default_str();
    ex::add_list(app, "--rates", rates, "fractions of the tokens removed by the last layer");
    ex::add_list(app, "--fractions", fractions, "per-layer rates the sensitivity is measured at");
    ex::add_list(app, "--methods", methods, "methods of the rows that shrink the sequence (merge, prune)");
    app.add_option("--search-flops", search_flops,
                   "searched schedule: encoder FLOPs relative to dense at most (0: no search)")
        ->check(CLI::Range(0.0, 1.0))
        ->capture_default_str();
    app.add_option("--search-step", search_step, "searched schedule: fraction moved between layers per move")
        ->check(CLI::Range(0.001, 0.5))
        ->capture_default_str();
    ex::add_list(app, "--schedules", schedules,
                 "explicit merge schedules, each per-layer fractions separated by '/', e.g. 0.05/0.2/0.15/0.1/0/0");
    app.add_flag("!--no-allocator", allocator, "skip the allocator's schedule (and its sensitivity measurement)");
    ex::add_list(app, "--unmerge", unmerge,
                 "merge-compute-unmerge rows, each ATTENTION:MLP, the fractions of the rows merged for each "
                 "layer's attention and MLP");
    app.add_option("--unmerge-from", unmerge_from, "first layer the --unmerge rows merge in")
        ->check(CLI::NonNegativeNumber)
        ->capture_default_str();
    app.add_option("--metric", metric, "what merging matches on: keys (averaged over heads) or hidden")
        ->capture_default_str();
    app.add_option("--matching", matching, "how merging pairs tokens: bipartite (ToMe's) or greedy")
        ->capture_default_str();
    app.add_option("--size-penalty", size_penalty, "greedy pairs: similarity less this x log(size) per token")
        ->check(CLI::NonNegativeNumber)
        ->capture_default_str();
    app.add_flag("--protect-last", protect_last, "merging: the last token ([SEP]) neither merges nor absorbs");
    app.add_flag("--center", center, "subtract each sequence's mean metric row before matching");
    app.add_option("--report", report, "folder for report.md, results.csv and tokens.png");
    app.add_option("--second-text", second_text, "second corpus reported on")
        ->check(CLI::ExistingFile)
        ->capture_default_str();
    app.add_option("--second-slice", second_slice, "slice BEGIN:END of the second corpus reported on (empty: none)")
        ->capture_default_str();
    app.add_option("--second-passages", second_passages, "passages of the second corpus's report slice")
        ->check(CLI::PositiveNumber)
        ->capture_default_str();
    app.add_option("--second-stride", second_stride,
                   "second corpus: every K-th passage of its slice, so that the set spans more of the text")
        ->check(CLI::PositiveNumber)
        ->capture_default_str();
    app.add_option("--fit-slice", fit_slice,
                   "slice of --text the embedding corrections are fitted on (empty: none from it)")
        ->capture_default_str();
    app.add_option("--fit-second-slice", fit_second_slice,
                   "slice of --second-text the embedding corrections are fitted on (empty: none from it)")
        ->capture_default_str();
    app.add_option("--fit-passages", fit_passages, "calibration passages per fit slice, at most")
        ->check(CLI::PositiveNumber)
        ->capture_default_str();
    ex::add_list(app, "--ridges", ridges, "affine correction: relative ridges tried on held-out calibration pairs");
  }
};

struct Run {
  RowMatrix<float> pool;  // [passages, dim] in passage order, mean pooling before the L2 normalisation
  RowMatrix<float> emb;   // pool's rows at unit length: the sentence embeddings
  double seconds = 0;     // the fastest of the repeats
  std::vector<token::LayerStats> stats;
};

Run encode(const nn::BertEncoder& enc, const nn::PassageBatches& b, token::Reducer* reducer, int64_t repeats) {
  Run r;
  r.pool.resize(static_cast<int64_t>(b.order.size()), enc.config().dim);
  r.seconds = INFINITY;
  for (int64_t rep = 0; rep < repeats; ++rep) {
    if (reducer) reducer->reset_stats();
    const auto t0 = std::chrono::steady_clock::now();
    std::vector<RowMatrix<float>> out;
    for (const auto& batch : b.batches) out.push_back(token::mean_pool(batch, enc.forward(batch, reducer)));
    r.seconds = std::min(r.seconds, ex::seconds_since(t0));
    int64_t row = 0;
    for (const auto& e : out)
      for (int64_t i = 0; i < e.rows(); ++i, ++row) r.pool.row(b.order[static_cast<size_t>(row)]) = e.row(i);
  }
  r.emb = token::EmbeddingCorrection().embed(r.pool);
  if (reducer) r.stats = reducer->stats();
  return r;
}

RowMatrix<float> stack(const RowMatrix<float>& a, const RowMatrix<float>& b) {
  RowMatrix<float> out(a.rows() + b.rows(), a.cols());
  out << a, b;
  return out;
}

std::vector<int64_t> nearest(const RowMatrix<float>& e) {
  const RowMatrix<float> sim = e * e.transpose();
  std::vector<int64_t> nn(static_cast<size_t>(e.rows()));
  for (int64_t i = 0; i < e.rows(); ++i) {
    float best = -INFINITY;
    for (int64_t j = 0; j < e.rows(); ++j)
      if (j != i && sim(i, j) > best) {
        best = sim(i, j);
        nn[static_cast<size_t>(i)] = j;
      }
  }
  return nn;
}

// Bins of a passage's dense margin (nearest minus second-nearest cosine): the smaller it is, the smaller a
// perturbation that changes the passage's nearest neighbour.
constexpr std::array<double, 3> kMarginEdges = {0.01, 0.03, 0.1};
constexpr int kMarginBins = static_cast<int>(kMarginEdges.size()) + 1;

int margin_bin(double m) {
  int b = 0;
  while (b < static_cast<int>(kMarginEdges.size()) && m >= kMarginEdges[static_cast<size_t>(b)]) ++b;
  return b;
}

// A report set's dense embeddings, each passage's nearest other passage and its margin over the second nearest.
struct ReportSet {
  std::string name;
  RowMatrix<float> dense;
  std::vector<int64_t> dense_nn;
  std::vector<double> nearest_cos, margin;
};

ReportSet report_set(std::string name, RowMatrix<float> dense) {
  ReportSet s{std::move(name), std::move(dense), {}, {}, {}};
  s.dense_nn = nearest(s.dense);
  const RowMatrix<float> sim = s.dense * s.dense.transpose();
  for (int64_t i = 0; i < sim.rows(); ++i) {
    double first = -INFINITY, second = -INFINITY;
    for (int64_t j = 0; j < sim.cols(); ++j) {
      if (j == i) continue;
      const double v = sim(i, j);
      second = std::max(second, std::min(first, v));
      first = std::max(first, v);
    }
    s.nearest_cos.push_back(first);
    s.margin.push_back(first - second);
  }
  return s;
}

// How close a pool's passages are to each other: the mean cosine to the nearest other passage, the mean margin,
// and how many passages fall in each margin bin.
std::string closeness(const ReportSet& s) {
  const auto n = static_cast<double>(s.margin.size());
  std::array<int64_t, kMarginBins> count{};
  for (double m : s.margin) ++count[static_cast<size_t>(margin_bin(m))];
  char buf[320];
  std::snprintf(buf, sizeof buf,
                "%s: %zu passages, nearest-neighbour cosine %.4f, margin to the second %.4f; margins < 0.01 / "
                "0.01-0.03 / 0.03-0.1 / >= 0.1: %lld / %lld / %lld / %lld passages",
                s.name.c_str(), s.margin.size(), std::accumulate(s.nearest_cos.begin(), s.nearest_cos.end(), 0.0) / n,
                std::accumulate(s.margin.begin(), s.margin.end(), 0.0) / n, static_cast<long long>(count[0]),
                static_cast<long long>(count[1]), static_cast<long long>(count[2]), static_cast<long long>(count[3]));
  return buf;
}

// How close embeddings stay to the dense ones: mean and least cosine, and the share of passages whose nearest
// other passage is the dense embedding's, overall and per margin bin.
struct Quality {
  double cos_mean = 0, cos_min = 1, nn_agree = 0;
  std::array<int64_t, kMarginBins> agree{}, total{};
  std::string bins() const {
    std::string out;
    for (int b = 0; b < kMarginBins; ++b) {
      char buf[48];
      const auto k = static_cast<size_t>(b);
      std::snprintf(buf, sizeof buf, "%s%lld/%lld", b ? " / " : "", static_cast<long long>(agree[k]),
                    static_cast<long long>(total[k]));
      out += buf;
    }
    return out;
  }
};

Quality quality(const RowMatrix<float>& emb, const ReportSet& s) {
  const auto got = nearest(emb);
  Quality q;
  int64_t agree = 0;
  for (int64_t i = 0; i < emb.rows(); ++i) {
    const auto k = static_cast<size_t>(i);
    const double cs = emb.row(i).dot(s.dense.row(i));
    q.cos_mean += cs;
    q.cos_min = std::min(q.cos_min, cs);
    const bool same = got[k] == s.dense_nn[k];
    agree += same;
    const auto b = static_cast<size_t>(margin_bin(s.margin[k]));
    q.agree[b] += same;
    ++q.total[b];
  }
  q.cos_mean /= static_cast<double>(emb.rows());
  q.nn_agree = static_cast<double>(agree) / static_cast<double>(emb.rows());
  return q;
}

struct Row {
  std::string method, schedule, layers;
  double rate = 0, tokens_left = 0, flops = 0, cos_mean = 0, cos_min = 0, nn_agree = 0, seconds = 0, speedup = 0;
  // Per report set and correction (the first entry is the Moby-Dick set uncorrected, as the columns above).
  struct Cell {
    std::string set, correction;
    Quality q;
    double ridge = 0;
  };
  std::vector<Cell> cells;
};

void write_report(const Args& a, const std::vector<Row>& rows, const std::string& header) {
  std::filesystem::create_directories(a.report);
  {
    std::ofstream csv(a.report / "results.csv");
    csv << "method,schedule,rate,tokens_left,flops,cos_mean,cos_min,nn_agree,"
           "seconds,speedup,layers\n";
    for (const auto& r : rows)
      csv << r.method << "," << r.schedule << "," << r.rate << "," << r.tokens_left << "," << r.flops << ","
          << r.cos_mean << "," << r.cos_min << "," << r.nn_agree << "," << r.seconds << "," << r.speedup << ",\""
          << r.layers << "\"\n";
  }
  {
    std::ofstream md(a.report / "report.md");
    md << "# Token merging and pruning on all-MiniLM-L6-v2\n\n" << header << "\n";
    md << "| method | schedule | removed (target) | tokens left | FLOPs vs "
          "dense | mean cos | min cos | NN agreement | "
          "encoder s | speed-up | per-layer rates "
          "|\n|---|---|---|---|---|---|---|---|---|---|---|\n";
    char buf[512];
    for (const auto& r : rows) {
      std::snprintf(buf, sizeof buf,
                    "| %s | %s | %.0f%% | %.1f%% | %.1f%% | %.4f | %.4f | "
                    "%.1f%% | %.3f | %.2fx | %s |\n",
                    r.method.c_str(), r.schedule.c_str(), 100 * r.rate, 100 * r.tokens_left, 100 * r.flops, r.cos_mean,
                    r.cos_min, 100 * r.nn_agree, r.seconds, r.speedup, r.layers.c_str());
      md << buf;
    }
    md << "\n![cosine and NN agreement vs FLOPs](tokens.png)\n";
    if (rows.size() > 1 && rows.back().cells.size() > 1) {
      md << "\n| method | schedule | removed | report set | correction | ridge | mean cos | min cos | NN agreement "
            "| NN agreed by dense margin < 0.01 / 0.01-0.03 / 0.03-0.1 / >= 0.1 |\n|---|---|---|---|---|---|---|---|---|---|\n";
      for (const auto& r : rows)
        for (const auto& c : r.cells) {
          char ridge[32] = "-";
          if (c.ridge > 0) std::snprintf(ridge, sizeof ridge, "%g", c.ridge);
          std::snprintf(buf, sizeof buf, "| %s | %s | %.0f%% | %s | %s | %s | %.4f | %.4f | %.1f%% | %s |\n",
                        r.method.c_str(), r.schedule.c_str(), 100 * r.rate, c.set.c_str(), c.correction.c_str(),
                        ridge, c.q.cos_mean, c.q.cos_min,
                        100 * c.q.nn_agree, c.q.bins().c_str());
          md << buf;
        }
    }
  }
  {
    std::ofstream csv(a.report / "quality.csv");
    csv << "method,schedule,rate,set,correction,ridge,cos_mean,cos_min,nn_agree\n";
    for (const auto& r : rows)
      for (const auto& c : r.cells)
        csv << r.method << "," << r.schedule << "," << r.rate << "," << c.set << "," << c.correction << ","
            << c.ridge << "," << c.q.cos_mean << "," << c.q.cos_min << "," << c.q.nn_agree << "\n";
  }
  // One data block per (method, schedule): FLOPs fraction, mean cosine, NN agreement.
  std::vector<std::string> series;
  {
    std::ofstream dat(a.report / "tokens.dat");
    for (const auto& r : rows) {
      const std::string key = r.method + " " + r.schedule;
      if (r.method == "dense" || std::find(series.begin(), series.end(), key) != series.end()) continue;
      series.push_back(key);
      dat << "# " << key << "\n";
      for (const auto& q : rows)
        if (q.method + " " + q.schedule == key) dat << q.flops << " " << q.cos_mean << " " << q.nn_agree << "\n";
      dat << "\n\n";
    }
  }
  {
    std::ofstream gp(a.report / "tokens.gp");
    gp << "set terminal pngcairo size 1200,480\nset output 'tokens.png'\nset "
          "multiplot layout 1,2\n"
          "set key bottom right\nset grid\nset xlabel 'encoder FLOPs / "
          "dense'\n";
    for (int panel = 0; panel < 2; ++panel) {
      gp << "set ylabel '" << (panel ? "nearest-neighbour agreement" : "mean cosine to dense") << "'\nplot ";
      for (size_t i = 0; i < series.size(); ++i)
        gp << (i ? ", " : "") << "'tokens.dat' index " << i << " using 1:" << (panel ? 3 : 2)
           << " with linespoints title '" << series[i] << "'";
      gp << "\n";
    }
    gp << "unset multiplot\n";
  }
  if (!strata::examples::run_gnuplot(a.report, a.report / "tokens.gp", a.report / "gnuplot.log"))
    std::printf(
        "gnuplot absent or failed (see gnuplot.log): tokens.png not "
        "rendered; tokens.dat and tokens.gp are in %s\n",
        a.report.c_str());
}

void run(const Args& a) {
  const nn::TextSlice tune = nn::TextSlice::parse(a.text, a.tune_slice),
                      report = nn::TextSlice::parse(a.text, a.report_slice);
  require(!tune.overlaps(report), "--tune-slice ", tune.describe(), " overlaps --report-slice ", report.describe(),
          "; choose disjoint slices");
  const token::Metric metric = token::parse_metric(a.metric);
  const token::Matching matching = token::parse_matching(a.matching);
  for (double r : a.rates) require(r > 0 && r < 1, "option --rates holds ", r, "; rates are in (0, 1)");
  const nn::SentenceEncoder se = nn::SentenceEncoder::open(a.model);
  const nn::BertEncoder& enc = se.encoder();
  const nn::BertConfig& c = enc.config();

  nn::PassageOptions po;
  po.min_tokens = a.min_tokens;
  po.max_words = a.max_words;
  po.limit = a.tune_passages;
  const auto tune_texts = nn::sentence_passages(tune, se.tokenizer(), po);
  po.limit = a.report_passages;
  const auto report_texts = nn::sentence_passages(report, se.tokenizer(), po);
  const nn::PassageBatches tb = nn::batch_by_length(se.tokenizer(), tune_texts, a.batch),
                           rb = nn::batch_by_length(se.tokenizer(), report_texts, a.batch);
  // The second corpus's report slice, and the calibration passages of the corrections: every fit slice is
  // disjoint from both report slices.
  std::vector<nn::TextSlice> reported = {report};
  std::optional<nn::PassageBatches> sb;
  std::string extra_header;
  if (!a.second_slice.empty()) {
    const nn::TextSlice second = nn::TextSlice::parse(a.second_text, a.second_slice);
    po.limit = a.second_passages * a.second_stride;
    const auto all = nn::sentence_passages(second, se.tokenizer(), po);
    std::vector<std::string> kept;
    for (size_t i = 0; i < all.size(); i += static_cast<size_t>(a.second_stride)) kept.push_back(all[i]);
    sb = nn::batch_by_length(se.tokenizer(), kept, a.batch);
    reported.push_back(second);
    extra_header += "Second report set: " + second.describe() + ", " + std::to_string(kept.size()) +
                    " passages (every " + std::to_string(a.second_stride) + ")\n";
  }
  std::vector<nn::PassageBatches> fit_sets;
  for (const auto& [text, range] : {std::pair{a.text, a.fit_slice}, std::pair{a.second_text, a.fit_second_slice}}) {
    if (range.empty()) continue;
    const nn::TextSlice fit = nn::TextSlice::parse(text, range);
    for (const auto& r : reported)
      require(!fit.overlaps(r), "fit slice ", fit.describe(), " overlaps the report slice ", r.describe(),
              "; choose disjoint slices");
    po.limit = a.fit_passages;
    fit_sets.push_back(nn::batch_by_length(se.tokenizer(), nn::sentence_passages(fit, se.tokenizer(), po), a.batch));
    extra_header += "Corrections fitted on " + fit.describe() + ", " + std::to_string(fit_sets.back().order.size()) +
                    " passages.\n";
  }
  const double mean_len =
      std::accumulate(rb.lengths.begin(), rb.lengths.end(), 0.0) / static_cast<double>(rb.lengths.size());
  char header[1024];
  std::snprintf(header, sizeof header,
                "Report slice: %s, %zu passages of %lld-%lld tokens (mean "
                "%.1f). Tuning slice (sensitivity for the "
                "allocator): %s, %zu passages. Batches of %lld, the fastest of "
                "%lld runs, %d threads.\n",
                report.describe().c_str(), report_texts.size(),
                static_cast<long long>(*std::min_element(rb.lengths.begin(), rb.lengths.end())),
                static_cast<long long>(*std::max_element(rb.lengths.begin(), rb.lengths.end())), mean_len,
                tune.describe().c_str(), tune_texts.size(), static_cast<long long>(a.batch),
                static_cast<long long>(a.repeats), num_threads());
  std::printf("%s", header);

  std::vector<token::Method> methods;
  for (const auto& m : a.methods) methods.push_back(token::parse_method(m));
  // Each --unmerge item: the attention's and the MLP's fractions.
  std::vector<std::pair<double, double>> unmerge;
  for (const auto& item : a.unmerge) {
    const auto colon = item.find(':');
    require(colon != std::string::npos, "option --unmerge holds '", item, "'; each item is ATTENTION:MLP");
    const double att = ex::to_value<double>("--unmerge", item.substr(0, colon)),
                 mlp = ex::to_value<double>("--unmerge", item.substr(colon + 1));
    require(att >= 0 && att <= 0.5 && mlp >= 0 && mlp <= 0.5, "option --unmerge holds '", item,
            "'; both fractions are in [0, 0.5]");
    unmerge.emplace_back(att, mlp);
  }
  require(a.unmerge_from < c.n_layers, "option --unmerge-from is ", a.unmerge_from, "; the encoder has ", c.n_layers,
          " layers");

  token::Sensitivity sens;
  const bool allocate = a.allocator && !a.rates.empty() &&
                        std::find(methods.begin(), methods.end(), token::Method::merge) != methods.end();
  if (allocate) {
    token::SensitivityOptions so;
    so.fractions = a.fractions;
    so.metric = metric;
    const auto t0 = std::chrono::steady_clock::now();
    sens = token::measure_sensitivity(enc, tb.batches, so);
    std::printf("sensitivity (1 - mean cosine, tuning slice, %.0f s):\n", ex::seconds_since(t0));
    for (size_t l = 0; l < sens.loss.size(); ++l) {
      std::printf("  layer %zu:", l);
      for (size_t i = 0; i < sens.fractions.size(); ++i)
        std::printf("  %.2f:%.5f", sens.fractions[i], sens.loss[l][i]);
      std::printf("\n");
    }
  }

  const Run dense = encode(enc, rb, nullptr, a.repeats);
  std::vector<ReportSet> sets = {report_set("moby", dense.emb)};
  if (sb) {
    sets.push_back(report_set("sotu", encode(enc, *sb, nullptr, 1).emb));
    sets.push_back(report_set("mixed", stack(sets[0].dense, sets[1].dense)));
  }
  const ReportSet& moby = sets[0];
  RowMatrix<float> fit_dense;
  for (const auto& f : fit_sets) {
    const RowMatrix<float> p = encode(enc, f, nullptr, 1).pool;
    fit_dense = fit_dense.rows() ? stack(fit_dense, p) : p;
  }
  for (const auto& s : sets) extra_header += "Dense " + closeness(s) + ".\n";
  std::printf("%s", extra_header.c_str());
  const std::string full_header = std::string(header) + extra_header;
  const double dense_flops = token::dense_encoder_flops(c, rb.lengths);
  std::vector<Row> rows;
  rows.push_back({"dense", "-", "-", 0, 1, 1, 1, 1, 1, dense.seconds, 1, {}});
  const double original = std::accumulate(rb.lengths.begin(), rb.lengths.end(), 0.0);

  const auto measure_with = [&](const std::string& method, const std::string& name, const std::string& layers,
                                const token::ReducerOptions& o, double rate) {
    token::Reducer reducer(o);
    const Run run = encode(enc, rb, &reducer, a.repeats);
    Row row;
    row.method = method;
    row.schedule = name;
    row.layers = layers;
    row.rate = rate;
    row.tokens_left = static_cast<double>(run.stats.back().tokens_out) / original;
    row.flops = token::encoder_flops(c, run.stats) / dense_flops;
    const Quality plain = quality(run.emb, moby);
    row.cos_mean = plain.cos_mean;
    row.cos_min = plain.cos_min;
    row.nn_agree = plain.nn_agree;
    row.seconds = run.seconds;
    row.speedup = dense.seconds / run.seconds;
    std::printf(
        "%-6s %-11s %3.0f%%: tokens left %5.1f%%, FLOPs %5.1f%%, cos "
        "%.4f (min %.4f), NN %5.1f%%, %.3f s (%.2fx)\n",
        row.method.c_str(), name.c_str(), 100 * rate, 100 * row.tokens_left, 100 * row.flops, row.cos_mean, row.cos_min,
        100 * row.nn_agree, row.seconds, row.speedup);
    // The same reducer on the second report set and on the calibration passages; corrections fitted on the
    // latter, applied to both report sets.
    std::vector<RowMatrix<float>> pools = {run.pool};
    if (sb) pools.push_back(encode(enc, *sb, &reducer, 1).pool);
    std::vector<std::pair<std::string, token::EmbeddingCorrection>> corrections = {{"none", {}}};
    if (!fit_sets.empty()) {
      RowMatrix<float> fit_merged;
      for (const auto& f : fit_sets) {
        const RowMatrix<float> p = encode(enc, f, &reducer, 1).pool;
        fit_merged = fit_merged.rows() ? stack(fit_merged, p) : p;
      }
      token::CorrectionOptions co;
      co.ridges = a.ridges;
      co.kind = token::CorrectionKind::shift;
      corrections.emplace_back("shift", token::EmbeddingCorrection::fit(fit_merged, fit_dense, co));
      co.kind = token::CorrectionKind::affine;
      corrections.emplace_back("affine", token::EmbeddingCorrection::fit(fit_merged, fit_dense, co));
      std::printf("  affine ridge %g (held-out cosine", corrections.back().second.ridge());
      for (double h : corrections.back().second.holdout_cosine()) std::printf(" %.4f", h);
      std::printf(")\n");
    }
    for (const auto& [cname, corr] : corrections) {
      std::vector<RowMatrix<float>> embs;
      for (const auto& p : pools) embs.push_back(corr.embed(p));
      if (embs.size() == 2) embs.push_back(stack(embs[0], embs[1]));
      for (size_t k = 0; k < sets.size(); ++k) {
        const Quality q = quality(embs[k], sets[k]);
        row.cells.push_back({sets[k].name, cname, q, corr.ridge()});
        std::printf("  %-5s %-6s cos %.4f (min %.4f), NN %5.1f%% (by margin %s)\n", sets[k].name.c_str(),
                    cname.c_str(), q.cos_mean, q.cos_min, 100 * q.nn_agree, q.bins().c_str());
      }
    }
    rows.push_back(row);
  };
  const auto measure = [&](token::Method m, const std::string& name, const token::Schedule& s, double rate) {
    token::ReducerOptions o;
    // The allocator's plan may ask more of the last layers than the shortest passages hold.
    o.allow_shortfall = name == "allocator";
    o.method = m;
    o.metric = metric;
    o.matching = matching;
    o.center = a.center;
    o.protect_last = a.protect_last;
    o.size_penalty = a.size_penalty;
    o.schedule = s;
    measure_with(std::string(token::method_name(m)), name, s.str(), o, rate);
  };
  for (double rate : a.rates) {
    const token::Schedule constant = token::Schedule::constant(c.n_layers, rate);
    const token::Schedule decreasing = token::Schedule::decreasing(c.n_layers, rate);
    for (const auto& [name, schedule] : {std::pair{"constant", &constant}, std::pair{"decreasing", &decreasing}})
      for (token::Method m : methods) measure(m, name, *schedule, rate);
    if (a.search_flops > 0 && std::find(methods.begin(), methods.end(), token::Method::merge) != methods.end()) try {
        token::SearchOptions so;
        so.reducer.metric = metric;
        so.reducer.matching = matching;
        so.reducer.center = a.center;
        so.reducer.protect_last = a.protect_last;
        so.reducer.size_penalty = a.size_penalty;
        so.total = rate;
        so.max_flops = a.search_flops;
        so.step = a.search_step;
        const auto t0 = std::chrono::steady_clock::now();
        const token::SearchResult found = token::search_schedule(enc, tb.batches, so);
        std::printf("search at %.0f%% (tuning slice, %lld runs, %.0f s): %s, loss %.5f, FLOPs %.1f%%\n", 100 * rate,
                    static_cast<long long>(found.evaluations), ex::seconds_since(t0), found.schedule.str().c_str(),
                    found.loss, 100 * found.flops);
        measure(token::Method::merge, "searched", found.schedule, rate);
      } catch (const Error& e) {
        std::printf("search at %.0f%%: %s\n", 100 * rate, e.what());
      }
    // The allocator at the constant schedule's FLOPs (under the token-linear cost model).
    if (allocate) try {
        measure(token::Method::merge, "allocator",
                token::allocate_schedule(sens, c, token::schedule_cost(sens, c, constant), constant.total()), rate);
      } catch (const Error& e) {
        std::printf("allocator at %.0f%%: %s\n", 100 * rate, e.what());
      }
  }
  for (const auto& item : a.schedules) {
    token::Schedule s;
    for (const auto& f : ex::split(item, '/')) s.fraction.push_back(ex::to_value<double>("--schedules", f));
    measure(token::Method::merge, "explicit", s, s.total());
  }
  for (const auto& [att, mlp] : unmerge) {
    token::ReducerOptions o;
    o.metric = token::Metric::hidden;
    o.matching = matching;
    o.center = a.center;
    o.protect_last = a.protect_last;
    o.size_penalty = a.size_penalty;
    for (int64_t l = 0; l < c.n_layers; ++l) {
      o.merge_attention.push_back(l >= a.unmerge_from ? att : 0.0);
      o.merge_mlp.push_back(l >= a.unmerge_from ? mlp : 0.0);
    }
    char name[64], layers[96];
    std::snprintf(name, sizeof name, "att %.2f + MLP %.2f", att, mlp);
    std::snprintf(layers, sizeof layers, "layers %lld-%lld", static_cast<long long>(a.unmerge_from),
                  static_cast<long long>(c.n_layers - 1));
    // The rate column: the share of the sublayers' rows merged, weighted by their FLOPs per row.
    const double attention_share = 4.0 / (4.0 + 2.0 * static_cast<double>(c.hidden_dim) / static_cast<double>(c.dim));
    measure_with("unmerge", name, layers, o, attention_share * att + (1 - attention_share) * mlp);
  }
  if (!a.report.empty()) {
    write_report(a, rows, full_header);
    std::printf("report: %s\n", (a.report / "report.md").c_str());
  }
}

}  // namespace

int main(int argc, char** argv) {
  strata::ensure_fast_blas(argc, argv);
  CLI::App app{
      "Token merging and pruning on all-MiniLM-L6-v2: cosine, NN "
      "agreement, FLOPs, time",
      "token_merge_eval"};
  Args a;
  a.add_options(app);
  return strata::examples::run_main(app, argc, argv, [&] { run(a); });
}
