#pragma once
// The steps `strata plan` and `strata compress` share: load the dense model, calibrate it, build the
// candidate table a recipe allows, apply a plan, and measure a compressed model against the dense one.
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "strata/budget/allocator.hpp"
#include "strata/budget/recipe.hpp"
#include "strata/compress/compressor.hpp"
#include "strata/compress/model_io.hpp"
#include "strata/io/model.hpp"
#include "strata/nn/calibration.hpp"
#include "strata/nn/dataset.hpp"
#include "strata/nn/eval.hpp"
#include "strata/nn/llama.hpp"
#include "strata/nn/tokenizer.hpp"

namespace strata::cli {

struct DenseModel {
  std::unique_ptr<io::Model> file;
  std::unique_ptr<nn::LlamaModel> model;
  std::unique_ptr<nn::BpeTokenizer> tokenizer;
};
// A GGUF llama model with a tokenizer; errors name the file.
DenseModel load_dense(const std::string& path);

struct CalibrationSet {
  nn::Calibration stats;
  std::vector<std::vector<int32_t>> sequences;
  double seconds = 0;
};
std::unique_ptr<CalibrationSet> calibrate_on(const DenseModel& dense, const nn::TextSlice& slice, int64_t sequences,
                                             int64_t length);

// Dense weights, the calibration each layer sees, and the compressed forms made so far: the table,
// the solvers' plans and the evolutionary search all ask for the same (tensor, method, knob) many
// times, and applying a compressor is the expensive part.
class LayerBank {
 public:
  // tied_output: the model's output head is token_embd itself (no output.weight in the file).
  LayerBank(const nn::LlamaModel& dense, const nn::Calibration& calib, bool tied_output);
  bool tied_output() const { return tied_output_; }
  const RowMatrix<float>& weight(const std::string& tensor);
  compress::LayerCalibration calibration(const std::string& tensor);
  const compress::Compressed& compressed(const std::string& tensor, const std::string& method, const std::string& knob);
  std::shared_ptr<const nn::Linear> linear(const std::string& tensor, const std::string& method,
                                           const std::string& knob);
  // Drops cached compressed forms (weights and statistics stay).
  void trim();

 private:
  struct Stats {
    Matrix<double> hessian;
    Vector<double> mean_sq, mean_abs;
    int64_t tokens = 0;
  };
  const nn::LlamaModel& dense_;
  const nn::Calibration& calib_;
  bool tied_output_;
  std::map<std::string, RowMatrix<float>> weights_;
  std::map<const nn::InputStats*, std::shared_ptr<Stats>> stats_;
  std::map<std::tuple<std::string, std::string, std::string>, compress::Compressed> compressed_;
  std::map<std::tuple<std::string, std::string, std::string>, std::shared_ptr<const nn::Linear>> linears_;
};

// [rows, cols] of a tensor the pipeline can compress: a linear layer's weight or the token embedding.
std::pair<int64_t, int64_t> weight_shape(const nn::LlamaModel& dense, const std::string& tensor);

// The knob a ggml type request becomes for a layer, following llama.cpp's fallback for rows that
// are not whole super-blocks ("q3_k" on 576 columns -> "iq4_nl"); other methods' knobs unchanged.
std::string effective_knob(const std::string& method, const std::string& knob, int64_t cols);

// The tensors a recipe covers (first matching rule, not skipped), with their parameter counts.
std::vector<std::pair<std::string, int64_t>> covered_tensors(const DenseModel& dense, const budget::Recipe& recipe);

// Every allowed option of every covered tensor with its cost and relative output error.
budget::Table build_candidates(const DenseModel& dense, const budget::Recipe& recipe, LayerBank& bank);

class Judge;

// Turns each layer's relative output errors into estimates of the KL divergence the layer alone adds
// to the model: the layer is set to its worst option, the whole model's KL on the probe measured, and
// all its options' errors scaled by KL / error. Layers differ by orders of magnitude in how much
// their output error matters downstream (the first blocks, ffn_down, the output head), which a sum
// of relative errors cannot see. Returns the per-layer sensitivities.
std::vector<double> weight_errors_by_kl(budget::Table& table, const nn::LlamaModel& dense, LayerBank& bank,
                                        const Judge& probe);

// The plan that gives every layer the same request `method:knob` (with the ggml fallback), as
// llama-quantize does for one type: the baseline the allocator is judged against.
budget::Plan uniform_plan(const budget::Table& table, const std::string& method, const std::string& knob,
                          const nn::LlamaModel& dense);

// The dense model with every layer of the plan replaced by its compressed form.
nn::LlamaModel apply_plan(const nn::LlamaModel& dense, const budget::Plan& plan, LayerBank& bank);
compress::Compressed copy_of(const compress::Compressed& c);
compress::LayerMap plan_layers(const budget::Plan& plan, LayerBank& bank);

// A compressed model against the dense one on fixed token windows, with the dense log-probabilities
// computed once (so each judgement costs one forward pass of the compressed model): the fitness of
// the evolutionary search and the report's measurements. Each window is scored on its own; the
// prediction of token i+1 from tokens 0..i.
struct Judgement {
  double mean_kl = 0, p99_kl = 0, top1 = 0;  // KL(dense || model) in nats, top-1 agreement
  double perplexity = 0, dense_perplexity = 0;
  int64_t tokens = 0;
};

class Judge {
 public:
  Judge(const nn::LlamaModel& dense, std::vector<std::vector<int32_t>> windows);
  Judgement operator()(const nn::LlamaModel& model) const;
  double kl(const nn::LlamaModel& model) const { return (*this)(model).mean_kl; }
  int64_t tokens() const { return tokens_; }

 private:
  std::vector<std::vector<int32_t>> windows_;
  std::vector<std::vector<float>> dense_logp_;  // per window [len - 1, vocab]
  std::vector<int32_t> dense_top1_;
  double dense_nll_ = 0;
  int64_t vocab_ = 0, tokens_ = 0;
};

}  // namespace strata::cli
