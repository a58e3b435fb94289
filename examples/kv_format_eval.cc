// Measured figures for docs/kv-cache.md: SmolLM2-135M, run in its file's types, decoding real text
// with its KV cache stored in each kv::CacheFormat, against the float32 cache. Each window of the
// text is a prompt of --context tokens read once with the float32 cache (optionally evicted to
// --budget tokens per KV head at the prompt, SnapKV + AdaKV), then the next --steps tokens decoded
// one at a time (teacher-forced) by a session continuing from it with its cache re-stored in the
// format (kv::Session::with_format, KIVI's setting: the prompt attends in full precision, its keys
// and values are then held quantized, and every new token is stored in the format as it comes).
// Reported per format: mean KL(p_float || p_format) over the decoded tokens' next-token
// distributions, perplexity of the decoded tokens (with the standard error of its ratio to the
// float32 cache's), and the cache's bytes. A name KEYS/VALUES (f32/kivi4) stores the two apart.
//
// With --kv-bits B1,B2,..: per-layer formats chosen by strata's allocator (kv/format_allocate.hpp).
// The KL cost of every (layer, keys or values, format) is measured on calibration text (--calib,
// SOTU by default, disjoint from the evaluation text), once without and once with rotation; each
// budget in bits per element is spent by budget::solve, and the allocated formats are evaluated on
// the windows beside the uniform ones.
//
//   kv_format_eval [--model GGUF] [--text TXT] [--slice 0.7:0.8] [--context 2048] [--steps 64]
//                  [--windows 2] [--formats f16,q8_0,q4_0,kivi4,kivi2,f32/kivi4] [--kivi-group 32]
//                  [--kivi-residual 32] [--rotation both] [--seed 0] [--budget 0]
//                  [--kv-bits 3.5,4.5,5] [--menu f16,q8_0,q4_0,kivi4,kivi2] [--calib SOTU]
//                  [--calib-slice 0.5:0.6] [--calib-windows 1] [--calib-length 2048] [--calib-probe 32]
//                  [--alloc-rotation both] [--tables-out JSON] [--tables-in JSON]
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "real_data_args.hpp"
#include "strata/core/blas.hpp"
#include "strata/core/error.hpp"
#include "strata/core/parallel.hpp"
#include "strata/io/mapped_file.hpp"
#include "strata/io/model.hpp"
#include "strata/kv/format_allocate.hpp"
#include "strata/kv/session.hpp"
#include "strata/nn/dataset.hpp"
#include "strata/nn/llama.hpp"
#include "strata/nn/tokenizer.hpp"

namespace {

using namespace strata;
namespace fs = std::filesystem;
using strata::examples::seconds_since;

struct Args {
  fs::path model = examples::data_paths().smollm2();
  fs::path text = examples::data_paths().moby_dick();
  std::string slice = examples::kReportSlice;
  int64_t context = 2048, steps = 64, windows = 2, kivi_group = 32, kivi_residual = 32, budget = 0;
  uint64_t seed = 0;
  std::vector<std::string> formats = {"f16", "q8_0", "q4_0", "kivi4", "kivi2"};
  // Allocation: budgets, the menu, the calibration text and where the measured tables go.
  std::vector<double> kv_bits;
  std::vector<std::string> menu = {"f16", "q8_0", "q4_0", "kivi4", "kivi2"};
  fs::path calib = examples::data_paths().sotu(), tables_out, tables_in;
  std::string calib_slice = "0.5:0.6", alloc_rotation = "both", rotation = "both";
  int64_t calib_windows = 1, calib_length = 2048, calib_probe = 32;

  void add_options(CLI::App& app) {
    examples::add_model_option(app, model);
    app.add_option("--text", text, "text the windows are cut from")->check(CLI::ExistingFile)->capture_default_str();
    app.add_option("--slice", slice, "slice BEGIN:END of --text")->capture_default_str();
    app.add_option("--context", context, "prompt tokens per window")->check(CLI::PositiveNumber)->capture_default_str();
    app.add_option("--steps", steps, "tokens decoded after each prompt")->check(CLI::PositiveNumber)->capture_default_str();
    app.add_option("--windows", windows, "windows of the text")->check(CLI::PositiveNumber)->capture_default_str();
    examples::add_list(app, "--formats", formats, "KV formats (keys and values, or KEYS/VALUES)");
    app.add_option("--rotation", rotation, "run each format without rotation (off), with it (on) or both")
        ->check(CLI::IsMember({"off", "on", "both"}))
        ->capture_default_str();
    app.add_option("--kivi-group", kivi_group, "KIVI group G")->capture_default_str();
    app.add_option("--kivi-residual", kivi_residual, "KIVI float32 window R")->capture_default_str();
    app.add_option("--seed", seed, "the rotation's random signs")->capture_default_str();
    app.add_option("--budget", budget, "tokens per KV head kept at the prompt (SnapKV, AdaKV); 0 = no eviction")
        ->capture_default_str();
    examples::add_list(app, "--kv-bits", kv_bits, "budgets in bits per element for allocated per-layer formats");
    examples::add_list(app, "--menu", menu, "formats the allocator chooses from, per layer for keys and values");
    app.add_option("--calib", calib, "calibration text for the allocation")->check(CLI::ExistingFile)->capture_default_str();
    app.add_option("--calib-slice", calib_slice, "calibration slice BEGIN:END of --calib")->capture_default_str();
    app.add_option("--calib-windows", calib_windows, "calibration windows")->check(CLI::PositiveNumber)->capture_default_str();
    app.add_option("--calib-length", calib_length, "tokens per calibration window, probe included")
        ->check(CLI::PositiveNumber)
        ->capture_default_str();
    app.add_option("--calib-probe", calib_probe, "tokens at the end of each calibration window scored over the stored cache")
        ->check(CLI::PositiveNumber)
        ->capture_default_str();
    app.add_option("--alloc-rotation", alloc_rotation, "allocate without rotation (off), with it (on) or both")
        ->check(CLI::IsMember({"off", "on", "both"}))
        ->capture_default_str();
    app.add_option("--tables-out", tables_out, "write the measured cost tables (JSON)");
    app.add_option("--tables-in", tables_in, "read cost tables written by --tables-out instead of measuring")
        ->check(CLI::ExistingFile);
  }

  static std::vector<bool> settings(const std::string& off_on_both) {
    if (off_on_both == "off") return {false};
    if (off_on_both == "on") return {true};
    return {false, true};
  }
  std::vector<bool> format_rotations() const { return settings(rotation); }
  std::vector<bool> rotations() const { return settings(alloc_rotation); }
};

// The formats to run, checked before the model is read: names, KIVI knobs, and a budget that must
// hold KIVI's float32 window.
std::vector<std::pair<std::string, kv::CacheFormat>> parse_formats(const Args& a) {
  std::vector<std::pair<std::string, kv::CacheFormat>> out;
  for (const auto& name : a.formats)
    for (bool rotate : a.format_rotations()) {
      kv::CacheFormat f;
      // "k/v" stores keys and values apart: f32 on one side isolates the other stream's error, and
      // with rotation on, that f32 stream is rotated losslessly, so only the other one's rotation counts.
      const size_t slash = name.find('/');
      f.key = kv::parse_kv_format(name.substr(0, slash), "--formats");
      f.value = slash == std::string::npos ? f.key : kv::parse_kv_format(name.substr(slash + 1), "--formats");
      f.kivi_group = a.kivi_group;
      f.kivi_residual = a.kivi_residual;
      f.rotate = rotate;
      f.rotation_seed = a.seed;
      require(f.kivi_group >= 1, "--kivi-group must be at least 1, got ", f.kivi_group);
      require(f.kivi_residual >= 0, "--kivi-residual must be non-negative, got ", f.kivi_residual);
      require(a.budget == 0 || a.budget >= f.min_budget(), "--budget ", a.budget, " cannot hold --kivi-residual ",
              f.kivi_residual, " float32 tokens per KV head");
      out.emplace_back(name + (rotate ? "+rot" : ""), f);
    }
  return out;
}

// The allocator's menu and budgets, checked before the model is read.
std::vector<kv::KvFormat> parse_menu(const Args& a) {
  std::vector<kv::KvFormat> menu;
  for (const auto& name : a.menu) menu.push_back(kv::parse_kv_format(name, "--menu"));
  if (a.kv_bits.empty()) return menu;
  for (double bits : a.kv_bits) kv::check_bits_budget(bits, menu, a.kivi_group, "--kv-bits");
  require(a.calib_length > a.calib_probe, "--calib-length ", a.calib_length, " must exceed --calib-probe ",
          a.calib_probe);
  const bool kivi = std::any_of(menu.begin(), menu.end(), kv::is_kivi);
  require(a.budget == 0 || !kivi || a.budget >= a.kivi_residual, "--budget ", a.budget, " cannot hold --kivi-residual ",
          a.kivi_residual, " float32 tokens per KV head (--menu has KIVI)");
  return menu;
}

// Cost tables for the allocation, one per rotation setting: measured on the calibration windows, or
// read from --tables-in.
std::map<bool, budget::Table> cost_tables(const Args& a, const nn::LlamaModel& model, const nn::BpeTokenizer& tok,
                                          const std::vector<kv::KvFormat>& menu) {
  const char* keys[2] = {"plain", "rotated"};
  std::map<bool, budget::Table> out;
  const int64_t rows = 2 * model.config().n_layers;
  if (!a.tables_in.empty()) {
    std::ifstream in(a.tables_in);
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(in);
    } catch (const nlohmann::json::exception& e) {
      fail("--tables-in ", a.tables_in.string(), ": not JSON (", e.what(), ")");
    }
    for (bool rotate : a.rotations()) {
      require(j.is_object() && j.contains(keys[rotate]), "--tables-in ", a.tables_in.string(), ": no '",
              keys[rotate], "' table");
      out[rotate] = budget::Table::from_json(j[keys[rotate]]);
      require(static_cast<int64_t>(out[rotate].layers.size()) == rows, "--tables-in ", a.tables_in.string(), ": '",
              keys[rotate], "' has ", out[rotate].layers.size(), " rows, the model needs ", rows);
    }
    return out;
  }
  const nn::TextSlice cs = nn::TextSlice::parse(a.calib, a.calib_slice);
  const auto windows =
      nn::cut_sequences(nn::tokenize_slice(tok, cs, a.calib_windows * a.calib_length), a.calib_windows, a.calib_length, -1);
  nlohmann::json j = nlohmann::json::object();
  for (bool rotate : a.rotations()) {
    kv::FormatTableOptions o;
    o.formats = menu;
    o.rotate = rotate;
    o.rotation_seed = a.seed;
    o.kivi_group = a.kivi_group;
    o.kivi_residual = a.kivi_residual;
    o.probe = a.calib_probe;
    const auto ts = std::chrono::steady_clock::now();
    out[rotate] = kv::format_table(model, windows, o, [&](int64_t done, int64_t total) {
      if (done % std::max<int64_t>(1, total / 10) == 0)
        std::fprintf(stderr, "cost table%s: %lld of %lld options measured, %.0f s\n", rotate ? " (rotated)" : "",
                     static_cast<long long>(done), static_cast<long long>(total), seconds_since(ts));
    });
    std::printf("cost table%s: %s, %lld windows of %lld tokens (%lld scored), %.1f s\n", rotate ? " (rotated)" : "",
                cs.describe().c_str(), static_cast<long long>(a.calib_windows), static_cast<long long>(a.calib_length),
                static_cast<long long>(a.calib_probe), seconds_since(ts));
    j[keys[rotate]] = out[rotate].to_json();
  }
  if (!a.tables_out.empty()) {
    io::AtomicFileWriter w(a.tables_out);
    const std::string text = j.dump(1);
    w.write(text.data(), text.size());
    w.commit();
  }
  return out;
}

// The cost table as text: per layer, keys then values, the KL of each format of the menu.
void print_table(const budget::Table& t, bool rotate) {
  std::printf("\nKL when only this layer's keys (k) or values (v) are stored in the format%s:\n", rotate ? ", rotated" : "");
  std::printf("%-16s", "row");
  for (const auto& o : t.layers[0].options) std::printf(" %10s", o.knob.c_str());
  std::printf("\n");
  for (const auto& row : t.layers) {
    std::printf("%-16s", row.tensor.c_str());
    for (const auto& o : row.options) std::printf(" %10.5f", o.error);
    std::printf("\n");
  }
}

// log-softmax of one row of logits.
std::vector<double> log_probs(const float* logits, int64_t vocab) {
  const double mx = *std::max_element(logits, logits + vocab);
  double z = 0;
  for (int64_t i = 0; i < vocab; ++i) z += std::exp(logits[i] - mx);
  std::vector<double> out(static_cast<size_t>(vocab));
  for (int64_t i = 0; i < vocab; ++i) out[static_cast<size_t>(i)] = logits[i] - mx - std::log(z);
  return out;
}

struct Result {
  double kl = 0, nll = 0, mib = 0, seconds = 0;
  // Per decoded token, d = -log q(token) + log p_f32(token): ppl / ppl_f32 = exp(mean d), and the
  // standard error of mean d says how far apart two perplexities must be to be told apart.
  double d_sum = 0, d_sq = 0;
  int64_t tokens = 0;

  double d_mean() const { return d_sum / static_cast<double>(tokens); }
  double d_se() const {
    const double n = static_cast<double>(tokens), m = d_mean();
    return tokens > 1 ? std::sqrt(std::max(0.0, (d_sq - n * m * m) / (n - 1)) / n) : 0;
  }
};

// Decodes tokens [context, context + steps) from `session`; logits of every step appended to `out`.
void decode(kv::Session& s, const std::vector<int32_t>& window, int64_t context, int64_t steps, int64_t vocab,
            std::vector<float>& out) {
  std::vector<float> logits(static_cast<size_t>(vocab));
  for (int64_t t = 0; t < steps; ++t) {
    s.forward(std::span<const int32_t>(window).subspan(static_cast<size_t>(context + t - 1), 1), logits.data(),
              nn::Logits::last);
    out.insert(out.end(), logits.begin(), logits.end());
  }
}

void run(const Args& a) {
  auto formats = parse_formats(a);
  const auto menu = parse_menu(a);
  const auto t0 = std::chrono::steady_clock::now();
  const nn::TextSlice slice = nn::TextSlice::parse(a.text, a.slice);
  if (!a.kv_bits.empty() && a.tables_in.empty()) {
    const nn::TextSlice cs = nn::TextSlice::parse(a.calib, a.calib_slice);
    require(!cs.overlaps(slice), "calibration text ", cs.describe(), " (", a.calib.string(), ") overlaps evaluation text ",
            slice.describe(), " (", a.text.string(), "): choose disjoint --calib-slice and --slice");
  }
  std::shared_ptr<const io::Model> file = io::open_model(a.model);
  const nn::LlamaModel model = nn::LlamaModel::load_stored(file);
  const auto& c = model.config();
  for (const auto& [name, f] : formats) f.validate(c.n_layers, c.head_dim);
  const nn::BpeTokenizer tok = nn::BpeTokenizer::from_model(*file);
  if (!a.kv_bits.empty()) {
    const auto tables = cost_tables(a, model, tok, menu);
    for (const auto& [rotate, table] : tables) {
      print_table(table, rotate);
      kv::CacheFormat base;
      base.kivi_group = a.kivi_group;
      base.kivi_residual = a.kivi_residual;
      base.rotate = rotate;
      base.rotation_seed = a.seed;
      for (double bits : a.kv_bits) {
        const kv::FormatAllocation alloc = kv::allocate_formats(table, bits, base, "--kv-bits");
        char name[32];
        std::snprintf(name, sizeof name, "alloc%g%s", bits, rotate ? "+rot" : "");
        std::printf("%s: %.3f bits per element, summed table KL %.5f: %s\n", name, alloc.bits_per_element,
                    alloc.predicted_error, alloc.format.describe().c_str());
        formats.emplace_back(name, alloc.format);
      }
    }
    std::printf("\n");
  }
  const int64_t length = a.context + a.steps, vocab = c.vocab_size;
  const auto windows = nn::cut_sequences(nn::tokenize_slice(tok, slice, a.windows * length), a.windows, length, -1);
  std::printf("model: %s in its file's types (%lld layers, %lld KV heads of %lld), %d threads\n",
              a.model.filename().string().c_str(), static_cast<long long>(c.n_layers),
              static_cast<long long>(c.n_kv_heads), static_cast<long long>(c.head_dim), num_threads());
  std::printf("text: %s, %lld windows of %lld prompt + %lld decoded tokens; KIVI G %lld R %lld; rotation seed %llu; %s\n\n",
              slice.describe().c_str(), static_cast<long long>(a.windows), static_cast<long long>(a.context),
              static_cast<long long>(a.steps), static_cast<long long>(a.kivi_group),
              static_cast<long long>(a.kivi_residual), static_cast<unsigned long long>(a.seed),
              a.budget > 0 ? ("prompt evicted to " + std::to_string(a.budget) + " tokens per KV head (snapkv, adakv)").c_str()
                           : "no eviction");

  Result reference;
  std::vector<Result> results(formats.size());
  for (const auto& window : windows) {
    std::optional<kv::Eviction> eviction;
    if (a.budget > 0) eviction = kv::Eviction{kv::make_scorer("snapkv"), kv::Policy::adakv(), a.budget};
    kv::Session base(model, length, eviction, kv::Schedule{.prefill = true, .decode = false, .every = 1});
    std::vector<float> logits(static_cast<size_t>(vocab));
    // The prompt without its last token; each decode step feeds the previous token and predicts the next.
    base.forward(std::span<const int32_t>(window).first(static_cast<size_t>(a.context - 1)), logits.data(),
                 nn::Logits::last);
    std::vector<float> want;
    auto ts = std::chrono::steady_clock::now();
    {
      auto s = base.with_format(kv::CacheFormat{});
      decode(*s, window, a.context, a.steps, vocab, want);
      reference.mib += static_cast<double>(s->cache_bytes()) / (1 << 20) / static_cast<double>(a.windows);
    }
    reference.seconds += seconds_since(ts);
    std::vector<double> ref_nll(static_cast<size_t>(a.steps));
    for (int64_t t = 0; t < a.steps; ++t) {
      const auto lp = log_probs(want.data() + t * vocab, vocab);
      ref_nll[static_cast<size_t>(t)] = -lp[static_cast<size_t>(window[static_cast<size_t>(a.context + t)])];
      reference.nll += ref_nll[static_cast<size_t>(t)];
    }
    reference.tokens += a.steps;
    for (size_t i = 0; i < formats.size(); ++i) {
      ts = std::chrono::steady_clock::now();
      auto s = base.with_format(formats[i].second);
      std::vector<float> got;
      decode(*s, window, a.context, a.steps, vocab, got);
      Result& r = results[i];
      r.seconds += seconds_since(ts);
      r.mib += static_cast<double>(s->cache_bytes()) / (1 << 20) / static_cast<double>(a.windows);
      for (int64_t t = 0; t < a.steps; ++t) {
        const auto p = log_probs(want.data() + t * vocab, vocab), q = log_probs(got.data() + t * vocab, vocab);
        double kl = 0;
        for (int64_t v = 0; v < vocab; ++v)
          kl += std::exp(p[static_cast<size_t>(v)]) * (p[static_cast<size_t>(v)] - q[static_cast<size_t>(v)]);
        r.kl += kl;
        const double nll = -q[static_cast<size_t>(window[static_cast<size_t>(a.context + t)])];
        const double d = nll - ref_nll[static_cast<size_t>(t)];
        r.nll += nll;
        r.d_sum += d;
        r.d_sq += d * d;
      }
      r.tokens += a.steps;
    }
    std::fprintf(stderr, "window %lld of %lld done, %.0f s\n", static_cast<long long>(&window - windows.data() + 1),
                 static_cast<long long>(a.windows), seconds_since(t0));
  }
  const double ref_ppl = std::exp(reference.nll / static_cast<double>(reference.tokens));
  // "se" is the standard error of the per-token log-ratio's mean, in percent of perplexity (exp' = 1
  // near 0); tokens of one window are not independent, so it is a lower bound on the uncertainty.
  std::printf("%-16s %6s %10s %10s %12s %10s %13s %8s %9s\n", "format", "bits", "cache MiB", "vs f32", "mean KL", "ppl",
              "ppl vs f32", "se", "decode s");
  std::printf("%-16s %6.2f %10.2f %9.3fx %12s %10.3f %13s %8s %9.1f\n", "f32", 32.0, reference.mib, 1.0, "0", ref_ppl, "",
              "", reference.seconds);
  for (size_t i = 0; i < formats.size(); ++i) {
    const Result& r = results[i];
    const double ppl = std::exp(r.nll / static_cast<double>(r.tokens));
    std::printf("%-16s %6.2f %10.2f %9.3fx %12.5f %10.3f %+12.2f%% %7.2f%% %9.1f\n", formats[i].first.c_str(),
                kv::format_bits(formats[i].second, c.n_layers, c.head_dim), r.mib, r.mib / reference.mib,
                r.kl / static_cast<double>(r.tokens), ppl, 100 * (std::exp(r.d_mean()) - 1), 100 * r.d_se(), r.seconds);
  }
  std::printf("\ntotal %.1f s\n", seconds_since(t0));
}

}  // namespace

int main(int argc, char** argv) {
  strata::ensure_fast_blas(argc, argv);
  CLI::App app{"SmolLM2 decoding with its KV cache stored as f16, q8_0, q4_0 or KIVI, with and without rotation",
               "kv_format_eval"};
  Args a;
  a.add_options(app);
  return strata::examples::run_main(app, argc, argv, [&] { run(a); });
}
