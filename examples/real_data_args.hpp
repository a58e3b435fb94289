#pragma once
// What the real-model evaluation examples share: which model, which calibration and evaluation text
// (and which slices of them), how much of each, as CLI11 options; comma-separated list options; and
// a main that turns every error into one message and a non-zero exit status. The defaults (SmolLM2-135M,
// SOTU 0:0.5 for calibration, Moby-Dick 0.7:0.8 for evaluation) come from io::DataPaths over the
// source tree, so STRATA_MODELS_DIR and STRATA_SHARED_DATA move them. Moby-Dick 0.7:0.8 is the report
// slice: no compressor default was chosen on it. Defaults are chosen on the tuning slice, 0.8:0.9, so
// that the figures the docs report are not the ones a choice was fitted to.
#include <CLI/CLI.hpp>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <sstream>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "strata/core/error.hpp"
#include "strata/io/data_paths.hpp"
#include "strata/nn/calibration.hpp"
#include "strata/nn/dataset.hpp"
#include "strata/nn/llama.hpp"
#include "strata/nn/tokenizer.hpp"

namespace strata::examples {

inline io::DataPaths data_paths() { return io::DataPaths::resolve(STRATA_SOURCE_DIR); }

inline double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// "a,b,,c" -> {"a", "b", "c"}.
inline std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  for (std::string part; std::getline(ss, part, sep);)
    if (!part.empty()) out.push_back(part);
  return out;
}

// `item` read as a T in full, or a CLI11 error naming the option.
template <class T>
T to_value(const std::string& option, const std::string& item) {
  if constexpr (std::is_same_v<T, std::string>) {
    return item;
  } else {
    std::istringstream in(item);
    T v{};
    in >> v;
    if (in.fail() || !in.eof()) throw CLI::ConversionError(option + ": '" + item + "' is not a number");
    return v;
  }
}

// A comma-separated list that replaces `out`'s defaults; an empty value ("") empties it, which is how
// a run skips a whole family of rows (prune_eval --patterns "").
template <class T>
CLI::Option* add_list(CLI::App& app, const std::string& name, std::vector<T>& out, const std::string& help) {
  std::ostringstream defaults;
  for (size_t i = 0; i < out.size(); ++i) defaults << (i ? "," : "") << out[i];
  return app.add_option_function<std::string>(
      name,
      [&out, name](const std::string& value) {
        out.clear();
        for (const auto& item : split(value, ',')) out.push_back(to_value<T>(name, item));
      },
      help + " [" + defaults.str() + "]");
}

inline CLI::Option* add_model_option(CLI::App& app, std::filesystem::path& model) {
  return app.add_option("--model", model, "GGUF llama model with its tokenizer")
      ->check(CLI::ExistingFile)
      ->capture_default_str();
}

// Moby-Dick slices: the headline figures are read on the report slice, defaults are tuned on the
// tuning slice (docs/quantization.md, docs/pruning.md, docs/lowrank.md).
inline constexpr const char* kReportSlice = "0.7:0.8";
inline constexpr const char* kTuningSlice = "0.8:0.9";

struct RealDataArgs {
  std::filesystem::path model, calib, eval;
  std::string calib_slice = "0:0.5", eval_slice = std::string(kReportSlice);
  int64_t sequences = 32, length = 512, eval_tokens = 4096;

  RealDataArgs() {
    const io::DataPaths paths = data_paths();
    model = paths.smollm2();
    calib = paths.sotu();
    eval = paths.moby_dick();
  }

  // --model, --calib, --calib-slice, --sequences, --length, --eval, --eval-slice, --eval-tokens.
  void add_options(CLI::App& app) {
    add_model_option(app, model);
    app.add_option("--calib", calib, "calibration text")->check(CLI::ExistingFile)->capture_default_str();
    app.add_option("--calib-slice", calib_slice, "calibration slice BEGIN:END, fractions of the file's bytes")
        ->capture_default_str();
    app.add_option("--sequences", sequences, "calibration sequences")->check(CLI::PositiveNumber)->capture_default_str();
    app.add_option("--length", length, "tokens per calibration sequence")
        ->check(CLI::PositiveNumber)
        ->capture_default_str();
    app.add_option("--eval", eval, "evaluation text")->check(CLI::ExistingFile)->capture_default_str();
    app.add_option("--eval-slice", eval_slice,
                   std::string("evaluation slice BEGIN:END: ") + kReportSlice + " is the report slice, " + kTuningSlice +
                       " the tuning slice the compressors' defaults were chosen on")
        ->capture_default_str();
    app.add_option("--eval-tokens", eval_tokens, "evaluation tokens")->check(CLI::PositiveNumber)->capture_default_str();
  }

  // The two slices, refused when they share bytes of one file however its two paths are spelled
  // (a relative and an absolute path, a symlink, "..") so that no figure is measured on text the
  // compressor saw. Cheap: call it before loading the model.
  std::pair<nn::TextSlice, nn::TextSlice> disjoint_slices() const {
    auto cs = nn::TextSlice::parse(calib, calib_slice), es = nn::TextSlice::parse(eval, eval_slice);
    require(!cs.overlaps(es), "calibration text ", cs.describe(), " (", calib.string(), ") overlaps evaluation text ",
            es.describe(), " (", eval.string(), "): choose disjoint --calib-slice and --eval-slice");
    return {std::move(cs), std::move(es)};
  }

  // --sequences x --length tokens of the calibration slice, without BOS.
  std::vector<std::vector<int32_t>> calibration_sequences(const nn::BpeTokenizer& tok, const nn::TextSlice& cs) const {
    return nn::cut_sequences(nn::tokenize_slice(tok, cs, sequences * length), sequences, length, -1);
  }

  // Runs `model` over `seqs` with `calib` as the hook, then prints "LABEL: SLICE, N sequences x L
  // tokens (S s)".
  void calibrate(const nn::LlamaModel& model, const std::vector<std::vector<int32_t>>& seqs, const nn::TextSlice& cs,
                 nn::Calibration& calib, const char* label = "calibration") const {
    size_t next = 0;
    const auto t0 = std::chrono::steady_clock::now();
    nn::calibrate(
        model,
        [&](std::vector<int32_t>& s) {
          if (next == seqs.size()) return false;
          s = seqs[next++];
          return true;
        },
        calib);
    std::printf("%s: %s, %lld sequences x %lld tokens (%.0f s)\n", label, cs.describe().c_str(),
                static_cast<long long>(sequences), static_cast<long long>(length), seconds_since(t0));
  }
};

// Parses the command line, then runs `body`. A bad option prints CLI11's message (--help the usage);
// anything `body` throws prints "NAME: what". Returns the exit status.
template <class Body>
int run_main(CLI::App& app, int argc, char** argv, Body&& body) {
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  try {
    body();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: %s\n", app.get_name().c_str(), e.what());
    return 1;
  }
  return 0;
}

}  // namespace strata::examples
