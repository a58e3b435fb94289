// Gated compression on a real detection task: sentences of Moby-Dick (positives, 10%) among State of
// the Union sentences, all-MiniLM-L6-v2 as the network, a logistic task head on its final embedding.
// A logistic gate after layer k stops most negatives; the layer-k states of the rest travel as a
// compressed payload and layers [k, 6) continue from the decoded states.
//
// Splits are disjoint by position in each text (runs of 50 sentences dealt to train / calibration /
// test by a seeded shuffle). The task head and the gate are fitted on train; the gate's L2 penalty is
// chosen and its thresholds calibrated on the calibration split, the codecs' PCA is fitted on
// calibration states; every figure in the table is measured on the test split.
//
//   gated_eval [--layers 1,2,3] [--recalls 0.9,0.95,0.97,0.99] [--codecs none,dense,r128,r64,...]
//              [--report DIR]

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <numeric>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "gnuplot.hpp"
#include "real_data_args.hpp"
#include "strata/core/blas.hpp"
#include "strata/core/error.hpp"
#include "strata/gated/codec.hpp"
#include "strata/gated/gated_compression.hpp"
#include "strata/gated/logistic.hpp"
#include "strata/gated/task.hpp"
#include "strata/nn/bert.hpp"

namespace strata::examples {
namespace {

struct Args {
  std::filesystem::path model, negatives, positives, report;
  gated::SourceTaskOptions task;
  std::vector<int64_t> layers = {1, 2, 3};
  std::vector<double> recalls = {0.9, 0.95, 0.97, 0.99};
  std::vector<std::string> codecs = {"none", "dense", "r128", "r64", "r32", "r16", "k48", "r128k48"};
  std::vector<double> gate_l2 = {1e-2, 1e-1, 1.0, 10.0};
  double head_l2 = 1e-3, tune_recall = 0.97;
  int64_t max_tokens = 128, batch = 32, pca_rows = 12000;
  std::string timed_codec = "r64";
};

// "r64k32t0.5" -> rank 64, keep 32, threshold 0.5; "dense" -> the centred activations, all kept;
// "none" -> no codec: the float32 states themselves (the gate alone).
gated::CodecOptions parse_codec(const std::string& spec) {
  gated::CodecOptions o;
  if (spec == "dense") return o;
  std::size_t i = 0;
  require(!spec.empty(), "--codecs: an empty entry");
  while (i < spec.size()) {
    const char kind = spec[i++];
    std::size_t used = 0;
    const std::string rest = spec.substr(i);
    double v = 0;
    try {
      v = std::stod(rest, &used);
    } catch (const std::exception&) {
      fail("--codecs: '", spec, "' is not none, dense or a list of r<rank>, k<keep>, t<threshold>");
    }
    i += used;
    if (kind == 'r')
      o.rank = static_cast<int64_t>(v);
    else if (kind == 'k')
      o.keep = static_cast<int64_t>(v);
    else if (kind == 't')
      o.threshold = static_cast<float>(v);
    else
      fail("--codecs: '", spec, "' has '", kind, "'; entries are none, dense or r<rank>, k<keep>, t<threshold>");
  }
  return o;
}

// One split through the encoder: the pooled layer-k states (gate features), the per-sentence layer-k
// states where kept, the final embeddings and the token counts.
struct Features {
  std::vector<int64_t> tokens;
  std::map<int64_t, RowMatrix<float>> pooled;
  std::map<int64_t, std::vector<RowMatrix<float>>> states;
  RowMatrix<float> embedding;
  double seconds = 0;
};

nn::TokenBatch make_batch(const std::vector<std::vector<int32_t>>& ids, const std::vector<int64_t>& members) {
  nn::TokenBatch b;
  b.size = static_cast<int64_t>(members.size());
  for (int64_t m : members) b.length = std::max<int64_t>(b.length, static_cast<int64_t>(ids[static_cast<std::size_t>(m)].size()));
  b.ids.assign(static_cast<std::size_t>(b.size * b.length), 0);
  b.attention_mask.assign(b.ids.size(), 0);
  for (std::size_t i = 0; i < members.size(); ++i) {
    const auto& s = ids[static_cast<std::size_t>(members[i])];
    std::copy(s.begin(), s.end(), b.ids.begin() + static_cast<std::ptrdiff_t>(i) * b.length);
    std::fill_n(b.attention_mask.begin() + static_cast<std::ptrdiff_t>(i) * b.length, s.size(), 1);
  }
  return b;
}

// Sentences grouped by length into batches of at most `size`.
std::vector<std::vector<int64_t>> batches(const std::vector<int64_t>& items, const std::vector<int64_t>& tokens,
                                          int64_t size) {
  std::vector<int64_t> order = items;
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
    return tokens[static_cast<std::size_t>(a)] < tokens[static_cast<std::size_t>(b)];
  });
  std::vector<std::vector<int64_t>> out;
  for (std::size_t i = 0; i < order.size(); i += static_cast<std::size_t>(size))
    out.emplace_back(order.begin() + static_cast<std::ptrdiff_t>(i),
                     order.begin() + static_cast<std::ptrdiff_t>(std::min(order.size(), i + static_cast<std::size_t>(size))));
  return out;
}

std::vector<int64_t> iota_n(int64_t n) {
  std::vector<int64_t> v(static_cast<std::size_t>(n));
  std::iota(v.begin(), v.end(), 0);
  return v;
}

Features encode_split(const nn::SentenceEncoder& model, const std::vector<std::vector<int32_t>>& ids,
                      const std::vector<int64_t>& layers, bool keep_states, int64_t batch_size) {
  const nn::BertEncoder& enc = model.encoder();
  const int64_t dim = enc.config().dim, n = static_cast<int64_t>(ids.size()), L = enc.config().n_layers;
  Features f;
  for (const auto& s : ids) f.tokens.push_back(static_cast<int64_t>(s.size()));
  for (int64_t k : layers) {
    f.pooled[k] = RowMatrix<float>(n, dim);
    if (keep_states) f.states[k].resize(static_cast<std::size_t>(n));
  }
  f.embedding.resize(n, dim);
  const auto t0 = std::chrono::steady_clock::now();
  for (const auto& members : batches(iota_n(n), f.tokens, batch_size)) {
    const nn::TokenBatch b = make_batch(ids, members);
    Tensor x = enc.input_states(b);
    int64_t at = 0;
    for (int64_t k : layers) {
      x = enc.run_layers(b, x, at, k);
      at = k;
      std::vector<int64_t> tok;
      for (int64_t m : members) tok.push_back(f.tokens[static_cast<std::size_t>(m)]);
      const float* p = x.view<const float>().data();
      const RowMatrix<float> pooled = gated::mean_pool(tok, p, dim);
      int64_t row = 0;
      for (std::size_t i = 0; i < members.size(); ++i) {
        f.pooled[k].row(members[i]) = pooled.row(static_cast<int64_t>(i));
        if (keep_states)
          f.states[k][static_cast<std::size_t>(members[i])] =
              Eigen::Map<const RowMatrix<float>>(p + row * dim, tok[i], dim);
        row += tok[i];
      }
    }
    x = enc.run_layers(b, x, at, L);
    const Tensor e = enc.pool(b, x);
    for (std::size_t i = 0; i < members.size(); ++i)
      f.embedding.row(members[i]) =
          Eigen::Map<const Vector<float>>(e.view<const float>().data() + static_cast<int64_t>(i) * dim, dim).transpose();
  }
  f.seconds = seconds_since(t0);
  return f;
}

struct Counts {
  int64_t tp = 0, fp = 0, tn = 0, fn = 0;
  void add(bool predicted, bool label) {
    if (predicted && label) ++tp;
    if (predicted && !label) ++fp;
    if (!predicted && label) ++fn;
    if (!predicted && !label) ++tn;
  }
  double accuracy() const { return 100.0 * static_cast<double>(tp + tn) / static_cast<double>(tp + fp + tn + fn); }
  double f1() const { return tp == 0 ? 0.0 : 100.0 * 2.0 * static_cast<double>(tp) / static_cast<double>(2 * tp + fp + fn); }
};

struct Row {
  int64_t layer = 0, dim = 0;  // dim: the encoder width, for bytes per token
  double target = 0, threshold = 0, cal_recall = 0;
  std::string codec;
  int64_t negatives = 0, stopped = 0, positives = 0, passed_pos = 0, passed = 0;
  double payload_bytes = 0, dense_bytes = 0, saved = 0;
  Counts gated, ungated;
};

constexpr const char* kTableHead =
    "| layer | target recall | codec | negatives stopped | positive recall (gate) | payload B/token | payload / dense | "
    "accuracy gated | accuracy ungated | delta (points) | F1 gated | F1 ungated | compute saved |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|\n";

// One markdown table row; payload bytes per token are over the float32 states of the same tokens.
std::string table_row(const Row& r) {
  const double tokens_dense = r.dense_bytes / 4.0 / static_cast<double>(r.dim);
  char buf[512];
  std::snprintf(buf, sizeof buf,
                "| %lld | %.2f | %s | %.1f%% (%lld/%lld) | %.1f%% (%lld/%lld) | %.1f | %.2f%% | %.2f%% | %.2f%% | "
                "%+.2f | %.1f | %.1f | %.1f%% |\n",
                static_cast<long long>(r.layer), r.target, r.codec.c_str(),
                100.0 * static_cast<double>(r.stopped) / static_cast<double>(r.negatives),
                static_cast<long long>(r.stopped), static_cast<long long>(r.negatives),
                100.0 * static_cast<double>(r.passed_pos) / static_cast<double>(r.positives),
                static_cast<long long>(r.passed_pos), static_cast<long long>(r.positives),
                tokens_dense > 0 ? r.payload_bytes / tokens_dense : 0.0,
                r.dense_bytes > 0 ? 100.0 * r.payload_bytes / r.dense_bytes : 0.0, r.gated.accuracy(),
                r.ungated.accuracy(), r.gated.accuracy() - r.ungated.accuracy(), r.gated.f1(), r.ungated.f1(), r.saved);
  return buf;
}

// A gnuplot string literal for a path: single quotes, doubled inside.
std::string quoted(const std::filesystem::path& p) {
  std::string out = "'";
  for (char c : p.string()) out += c == '\'' ? std::string("''") : std::string(1, c);
  return out + "'";
}

void write_report(const Args& a, const std::vector<Row>& rows, const std::string& setup) {
  std::filesystem::create_directories(a.report);
  {
    std::ofstream csv(a.report / "gated.csv");
    csv << "layer,target_recall,codec,threshold,calibration_recall,negatives_stopped_pct,positive_recall_pct,"
           "payload_bytes_per_token,payload_pct_of_dense,accuracy_gated,accuracy_ungated,f1_gated,f1_ungated,"
           "compute_saved_pct\n";
    for (const Row& r : rows) {
      const double tokens_dense = r.dense_bytes / 4.0 / static_cast<double>(r.dim);
      csv << r.layer << ',' << r.target << ',' << r.codec << ',' << r.threshold << ',' << r.cal_recall << ','
          << 100.0 * static_cast<double>(r.stopped) / static_cast<double>(r.negatives) << ','
          << 100.0 * static_cast<double>(r.passed_pos) / static_cast<double>(r.positives) << ','
          << (tokens_dense > 0 ? r.payload_bytes / tokens_dense : 0) << ','
          << (r.dense_bytes > 0 ? 100.0 * r.payload_bytes / r.dense_bytes : 0) << ',' << r.gated.accuracy() << ','
          << r.ungated.accuracy() << ',' << r.gated.f1() << ',' << r.ungated.f1() << ',' << r.saved << '\n';
    }
  }
  std::ofstream md(a.report / "gated.md");
  md << "# Gated compression, all-MiniLM-L6-v2\n\n" << setup << "\n\n";
  md << kTableHead;
  for (const Row& r : rows) md << table_row(r);
  // Plot: negatives stopped against positive recall per gate layer (codec-independent), and the
  // accuracy change against payload size at the tuning recall.
  {
    std::ofstream dat(a.report / "gated_gate.dat");
    for (int64_t k : a.layers) {
      dat << "# layer " << k << "\n";
      for (const Row& r : rows)
        if (r.layer == k && r.codec == a.codecs.front())
          dat << 100.0 * static_cast<double>(r.stopped) / static_cast<double>(r.negatives) << ' '
              << 100.0 * static_cast<double>(r.passed_pos) / static_cast<double>(r.positives) << '\n';
      dat << "\n\n";
    }
    std::ofstream pay(a.report / "gated_payload.dat");
    for (int64_t k : a.layers) {
      pay << "# layer " << k << "\n";
      for (const Row& r : rows)
        if (r.layer == k && std::abs(r.target - a.tune_recall) < 1e-9 && r.codec != "none")
          pay << 100.0 * r.payload_bytes / r.dense_bytes << ' ' << r.gated.accuracy() - r.ungated.accuracy() << '\n';
      pay << "\n\n";
    }
  }
  std::ofstream gp(a.report / "gated.gp");
  gp << "set terminal pngcairo size 1200,500\nset output " << quoted(a.report / "gated.png") << "\n";
  gp << "set multiplot layout 1,2\nset grid\n";
  gp << "set title 'Gate on the test split'\nset xlabel 'negatives stopped (%)'\nset ylabel 'positive recall (%)'\n";
  gp << "plot ";
  for (std::size_t i = 0; i < a.layers.size(); ++i)
    gp << (i ? ", " : "") << quoted(a.report / "gated_gate.dat") << " index " << i << " with linespoints title 'after layer "
       << a.layers[i] << "'";
  gp << "\nset title 'Compressed hand-off at target recall " << a.tune_recall
     << "'\nset xlabel 'payload (% of float32 states)'\nset ylabel 'accuracy change (points)'\nset logscale x\n";
  gp << "plot ";
  for (std::size_t i = 0; i < a.layers.size(); ++i)
    gp << (i ? ", " : "") << quoted(a.report / "gated_payload.dat") << " index " << i
       << " with points pointsize 1.5 title 'after layer " << a.layers[i] << "'";
  gp << "\nunset multiplot\n";
  gp.close();
  // The script names its files as given on the command line, so gnuplot runs where this program does.
  if (strata::examples::run_gnuplot(std::filesystem::current_path(), a.report / "gated.gp", a.report / "gnuplot.log"))
    std::printf("report: %s (gated.md, gated.csv, gated.png)\n", a.report.c_str());
  else
    std::printf("report: %s (gated.md, gated.csv; gnuplot absent or failed, no plot)\n", a.report.c_str());
}

void run(const Args& a) {
  require(!a.layers.empty() && !a.recalls.empty() && !a.codecs.empty(), "--layers, --recalls and --codecs need values");
  require(std::is_sorted(a.layers.begin(), a.layers.end()) &&
              std::adjacent_find(a.layers.begin(), a.layers.end()) == a.layers.end(),
          "--layers must be increasing");
  for (double r : a.recalls) require(r > 0 && r <= 1, "--recalls: ", r, " is outside (0, 1]");
  require(a.tune_recall > 0 && a.tune_recall <= 1, "--tune-recall: ", a.tune_recall, " is outside (0, 1]");
  for (const auto& c : a.codecs)
    if (c != "none") parse_codec(c);
  if (a.timed_codec != "none" && !a.timed_codec.empty()) parse_codec(a.timed_codec);

  gated::SourceTaskOptions to = a.task;
  to.negatives = a.negatives;
  to.positives = a.positives;
  auto t0 = std::chrono::steady_clock::now();
  const gated::SourceTask task = gated::build_source_task(to);
  std::printf("task: %lld SOTU and %lld Moby-Dick sentences of %d-%d words; train %zu, calibration %zu, test %zu "
              "(%.0f%% positives), seed %llu\n",
              static_cast<long long>(task.negative_sentences), static_cast<long long>(task.positive_sentences),
              to.min_words, to.max_words, task.train.text.size(), task.calibration.text.size(), task.test.text.size(),
              100 * to.positive_fraction, static_cast<unsigned long long>(to.seed));

  const nn::SentenceEncoder model = nn::SentenceEncoder::open(a.model, a.max_tokens);
  const nn::BertEncoder& enc = model.encoder();
  const int64_t L = enc.config().n_layers, dim = enc.config().dim;
  for (int64_t k : a.layers) require(k >= 1 && k < L, "--layers: ", k, " is outside [1, ", L, ")");
  for (const auto& c : a.codecs) {
    if (c == "none") continue;
    const gated::CodecOptions o = parse_codec(c);
    require(o.rank >= 0 && o.rank <= dim, "--codecs: '", c, "' needs a rank in [0, ", dim, "]");
    const int64_t coords = o.rank > 0 ? o.rank : dim;
    require(o.keep >= 0 && o.keep <= coords, "--codecs: '", c, "' keeps ", o.keep, " of ", coords, " coordinates");
  }
  const auto tokenize = [&](const gated::TaskSplit& s) {
    std::vector<std::vector<int32_t>> ids;
    for (const auto& t : s.text) ids.push_back(model.tokenizer().encode(t));
    return ids;
  };
  const auto ids_train = tokenize(task.train), ids_cal = tokenize(task.calibration), ids_test = tokenize(task.test);
  const Features train = encode_split(model, ids_train, a.layers, false, a.batch);
  const Features cal = encode_split(model, ids_cal, a.layers, true, a.batch);
  const Features test = encode_split(model, ids_test, a.layers, true, a.batch);
  int64_t test_tokens = std::accumulate(test.tokens.begin(), test.tokens.end(), int64_t{0});
  std::printf("features: %.0f s (train), %.0f s (calibration), %.0f s (test, %lld tokens)\n", train.seconds,
              cal.seconds, test.seconds, static_cast<long long>(test_tokens));

  // The task head on final embeddings (train), and the ungated model's test predictions.
  gated::LogisticOptions ho;
  ho.l2 = a.head_l2;
  const gated::LogisticModel head = gated::fit_logistic(train.embedding, task.train.label, ho);
  const Vector<double> z_test = head.logits(test.embedding);
  Counts ungated;
  for (int64_t i = 0; i < z_test.size(); ++i) ungated.add(z_test[i] > 0, task.test.label[static_cast<std::size_t>(i)]);
  std::printf("ungated head: test accuracy %.2f%%, F1 %.1f (%lld TP, %lld FP, %lld FN)\n", ungated.accuracy(),
              ungated.f1(), static_cast<long long>(ungated.tp), static_cast<long long>(ungated.fp),
              static_cast<long long>(ungated.fn));

  const auto count = [](const std::vector<uint8_t>& y, int v) {
    return static_cast<int64_t>(std::count(y.begin(), y.end(), static_cast<uint8_t>(v)));
  };
  const int64_t neg_test = count(task.test.label, 0), pos_test = count(task.test.label, 1);
  const int64_t pos_cal = count(task.calibration.label, 1);
  std::vector<Row> rows;
  std::ostringstream setup;
  std::mt19937_64 rng(to.seed);
  std::optional<gated::GatedCompression> timed;
  for (int64_t k : a.layers) {
    // The gate's L2 penalty: the one that stops most calibration negatives at the tuning recall.
    double best_l2 = a.gate_l2.front(), best_stop = -1;
    for (double l2 : a.gate_l2) {
      gated::LogisticOptions go;
      go.l2 = l2;
      const gated::LogisticModel g = gated::fit_logistic(train.pooled.at(k), task.train.label, go);
      const Vector<double> zc = g.logits(cal.pooled.at(k));
      const double t = gated::threshold_for_recall({zc.data(), static_cast<std::size_t>(zc.size())},
                                                   task.calibration.label, a.tune_recall);
      int64_t stop = 0;
      for (int64_t i = 0; i < zc.size(); ++i) stop += !task.calibration.label[static_cast<std::size_t>(i)] && zc[i] < t;
      if (stop > best_stop) best_stop = static_cast<double>(stop), best_l2 = l2;
    }
    gated::LogisticOptions go;
    go.l2 = best_l2;
    setup << "- gate after layer " << k << ": L2 " << best_l2 << " (chosen on calibration, " << best_stop
          << " of " << static_cast<int64_t>(task.calibration.text.size()) - pos_cal
          << " calibration negatives stopped at recall " << a.tune_recall << ")\n";
    // Calibration states for the codecs' mean and PCA: a seeded sample of token rows.
    std::vector<std::pair<int64_t, int64_t>> cells;
    for (std::size_t s = 0; s < cal.states.at(k).size(); ++s)
      for (int64_t t = 0; t < cal.states.at(k)[s].rows(); ++t) cells.emplace_back(static_cast<int64_t>(s), t);
    std::shuffle(cells.begin(), cells.end(), rng);
    cells.resize(std::min<std::size_t>(cells.size(), static_cast<std::size_t>(a.pca_rows)));
    RowMatrix<float> cal_rows(static_cast<int64_t>(cells.size()), dim);
    for (std::size_t i = 0; i < cells.size(); ++i)
      cal_rows.row(static_cast<int64_t>(i)) = cal.states.at(k)[static_cast<std::size_t>(cells[i].first)].row(cells[i].second);

    for (const std::string& spec : a.codecs) {
      gated::ActivationCodec codec =
          gated::ActivationCodec::fit(cal_rows, spec == "none" ? gated::CodecOptions{} : parse_codec(spec));
      gated::GatedCompression gc =
          gated::GatedCompression::fit(enc.config(), k, train.pooled.at(k), task.train.label, cal.pooled.at(k),
                                       task.calibration.label, a.recalls.front(), codec, go);
      const Vector<double> zc = gc.gate().logits(cal.pooled.at(k)), zt = gc.gate().logits(test.pooled.at(k));
      std::vector<double> thresholds;
      for (double r : a.recalls)
        thresholds.push_back(gated::threshold_for_recall({zc.data(), static_cast<std::size_t>(zc.size())},
                                                         task.calibration.label, r));
      if (k == a.layers.front() && spec == a.timed_codec) {
        timed = gc;
        timed->set_threshold(gated::threshold_for_recall({zc.data(), static_cast<std::size_t>(zc.size())},
                                                         task.calibration.label, a.tune_recall));
      }
      const double loosest = *std::min_element(thresholds.begin(), thresholds.end());
      // Sentences that pass the loosest threshold go on once; the tighter ones reuse their outcome.
      std::vector<int64_t> go_on;
      for (int64_t i = 0; i < zt.size(); ++i)
        if (zt[i] >= loosest) go_on.push_back(i);
      std::vector<double> z_end(static_cast<std::size_t>(zt.size()), 0.0), payload(zt.size(), 0.0);
      for (const auto& members : batches(go_on, test.tokens, a.batch)) {
        Tensor e;
        if (spec == "none") {
          const nn::TokenBatch b = make_batch(ids_test, members);
          int64_t total = 0;
          for (int64_t m : members) total += test.tokens[static_cast<std::size_t>(m)];
          Tensor x(DType::f32, Shape{total, dim});
          float* p = x.view<float>().data();
          for (int64_t m : members) {
            const auto& s = test.states.at(k)[static_cast<std::size_t>(m)];
            p = std::copy(s.data(), s.data() + s.size(), p);
          }
          e = enc.pool(b, enc.run_layers(b, x, k, L));
          for (int64_t m : members) payload[static_cast<std::size_t>(m)] = 4.0 * static_cast<double>(test.tokens[static_cast<std::size_t>(m)] * dim);
        } else {
          std::vector<std::vector<uint8_t>> payloads;
          for (int64_t m : members) {
            const auto& s = test.states.at(k)[static_cast<std::size_t>(m)];
            payloads.push_back(gc.codec().encode(s.data(), s.rows()));
            payload[static_cast<std::size_t>(m)] = static_cast<double>(payloads.back().size());
          }
          e = gc.back(enc, payloads);
        }
        const RowMatrix<float> emb = as_eigen(e.view<const float>());
        const Vector<double> z = head.logits(emb);
        for (std::size_t i = 0; i < members.size(); ++i) z_end[static_cast<std::size_t>(members[i])] = z[static_cast<int64_t>(i)];
      }
      const double codec_flops =
          spec == "none" ? 0.0 : 4.0 * static_cast<double>(dim) * static_cast<double>(codec.coordinates());
      for (std::size_t ri = 0; ri < a.recalls.size(); ++ri) {
        Row r;
        r.layer = k;
        r.dim = dim;
        r.target = a.recalls[ri];
        r.threshold = thresholds[ri];
        r.codec = spec;
        int64_t cal_pass = 0;
        for (int64_t i = 0; i < zc.size(); ++i) cal_pass += task.calibration.label[static_cast<std::size_t>(i)] && zc[i] >= r.threshold;
        r.cal_recall = static_cast<double>(cal_pass) / static_cast<double>(pos_cal);
        r.negatives = neg_test;
        r.positives = pos_test;
        r.ungated = ungated;
        double full = 0, spent = 0;
        for (int64_t i = 0; i < zt.size(); ++i) {
          const auto si = static_cast<std::size_t>(i);
          const bool label = task.test.label[si] != 0;
          const bool pass = zt[i] >= r.threshold;
          const int64_t n = test.tokens[si];
          full += gated::encoder_flops(enc.config(), n, 0, L);
          spent += gated::encoder_flops(enc.config(), n, 0, k) + 2.0 * static_cast<double>(dim);
          if (pass) {
            ++r.passed;
            r.passed_pos += label;
            r.payload_bytes += payload[si];
            r.dense_bytes += 4.0 * static_cast<double>(n * dim);
            spent += gated::encoder_flops(enc.config(), n, k, L) + codec_flops * static_cast<double>(n);
          } else {
            r.stopped += !label;
          }
          r.gated.add(pass && z_end[si] > 0, label);
        }
        r.saved = 100.0 * (1.0 - spent / full);
        rows.push_back(r);
      }
    }
  }

  std::printf("\n%s", kTableHead);
  for (const Row& r : rows) std::printf("%s", table_row(r).c_str());

  // Wall time of the whole gated path (front: layers [0, k) + gate + encode; back: decode + the rest)
  // against the ungated encoder on the test split, at the first layer, the tuning recall and --timed-codec.
  if (timed) {
    const auto members_all = batches(iota_n(static_cast<int64_t>(ids_test.size())), test.tokens, a.batch);
    // The best of two alternating rounds each: the cores are shared, and the minimum is the least disturbed.
    double t_full = 1e30, t_gated = 1e30, t_front = 1e30;
    std::size_t went_on = 0;
    for (int round = 0; round < 2; ++round) {
      auto t1 = std::chrono::steady_clock::now();
      for (const auto& members : members_all) {
        const Tensor e = enc.embed(make_batch(ids_test, members));
        (void)head.logits(as_eigen(e.view<const float>()));
      }
      t_full = std::min(t_full, seconds_since(t1));
      t1 = std::chrono::steady_clock::now();
      std::vector<std::vector<uint8_t>> go_on;
      for (const auto& members : members_all) {
        gated::GatedCompression::Front f = timed->front(enc, make_batch(ids_test, members));
        for (auto& p : f.payloads)
          if (!p.empty()) go_on.push_back(std::move(p));
      }
      const double front = seconds_since(t1);
      for (std::size_t i = 0; i < go_on.size(); i += static_cast<std::size_t>(a.batch)) {
        const std::vector<std::vector<uint8_t>> part(
            go_on.begin() + static_cast<std::ptrdiff_t>(i),
            go_on.begin() + static_cast<std::ptrdiff_t>(std::min(go_on.size(), i + static_cast<std::size_t>(a.batch))));
        const Tensor e = timed->back(enc, part);
        (void)head.logits(as_eigen(e.view<const float>()));
      }
      const double gated_s = seconds_since(t1);
      if (gated_s < t_gated) t_gated = gated_s, t_front = front;
      went_on = go_on.size();
    }
    const std::size_t go_on_size = went_on;
    setup << "- wall time on the test split (gate after layer " << a.layers.front() << ", recall " << a.tune_recall
          << ", codec " << a.timed_codec << ", " << go_on_size << " sentences go on; best of 2): ungated encoder "
          << t_full << " s, gated path " << t_gated << " s (front " << t_front << " s), " << t_full / t_gated
          << "x\n";
  }

  std::ostringstream head_line;
  head_line << "Task: Moby-Dick sentences (positives, " << 100 * to.positive_fraction
            << "%) among State of the Union sentences; " << task.train.text.size() << " train, "
            << task.calibration.text.size() << " calibration, " << task.test.text.size()
            << " test sentences, disjoint runs of " << to.block << " sentences, seed " << to.seed
            << ". Task head: logistic on the final MiniLM embedding (train). Every figure on the test split ("
            << neg_test << " negatives, " << pos_test << " positives, " << test_tokens
            << " tokens); thresholds calibrated on the calibration split. Payload: bytes of the payloads of the "
               "sentences that go on, over their float32 layer-k states (4 x 384 B/token). Compute saved: encoder "
               "FLOPs of the test split (6 layers) against the gated path (layers before the gate for all, the rest "
               "and the codec for those that go on).\n\n"
            << setup.str();
  std::printf("\n%s", head_line.str().c_str());
  std::printf("total %.0f s\n", seconds_since(t0));
  if (!a.report.empty()) write_report(a, rows, head_line.str());
}

}  // namespace
}  // namespace strata::examples

int main(int argc, char** argv) {
  using namespace strata::examples;
  strata::ensure_fast_blas(argc, argv);
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  Args a;
  const strata::io::DataPaths paths = data_paths();
  a.model = paths.models / "all-minilm-l6-v2";
  a.negatives = paths.sotu();
  a.positives = paths.moby_dick();
  CLI::App app{"Gated compression on all-MiniLM-L6-v2: Moby-Dick sentences among SOTU sentences", "gated_eval"};
  app.add_option("--model", a.model, "all-MiniLM-L6-v2 folder")->check(CLI::ExistingDirectory)->capture_default_str();
  app.add_option("--negatives", a.negatives, "negative text")->check(CLI::ExistingFile)->capture_default_str();
  app.add_option("--positives", a.positives, "positive text")->check(CLI::ExistingFile)->capture_default_str();
  app.add_option("--train", a.task.train, "train sentences")->capture_default_str();
  app.add_option("--calibration", a.task.calibration, "calibration sentences")->capture_default_str();
  app.add_option("--test", a.task.test, "test sentences")->capture_default_str();
  app.add_option("--positive-fraction", a.task.positive_fraction, "share of positives, (0, 0.1]")->capture_default_str();
  app.add_option("--block", a.task.block, "consecutive sentences kept in one split")->capture_default_str();
  app.add_option("--seed", a.task.seed, "seed of the splits and samples")->capture_default_str();
  add_list(app, "--layers", a.layers, "gate after these layers");
  add_list(app, "--recalls", a.recalls, "target recalls on calibration positives");
  add_list(app, "--codecs", a.codecs, "hand-off codecs: none, dense, r<rank>, k<keep>, t<threshold> combined");
  add_list(app, "--gate-l2", a.gate_l2, "gate L2 penalties tried on the calibration split");
  app.add_option("--tune-recall", a.tune_recall, "recall the gate's L2 is chosen at")->capture_default_str();
  app.add_option("--head-l2", a.head_l2, "task head L2 penalty")->capture_default_str();
  app.add_option("--max-tokens", a.max_tokens, "tokens per sentence, [CLS] and [SEP] included")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--batch", a.batch, "sentences per encoder batch")->check(CLI::PositiveNumber)->capture_default_str();
  app.add_option("--pca-rows", a.pca_rows, "calibration token rows the codecs are fitted on")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--timed-codec", a.timed_codec, "codec of the timed gated path (one of --codecs; '' skips)")
      ->capture_default_str();
  app.add_option("--report", a.report, "write gated.md, gated.csv and gated.png here");
  return run_main(app, argc, argv, [&] { run(a); });
}
