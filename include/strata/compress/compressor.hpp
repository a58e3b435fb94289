#pragma once
// The offline side of strata: a weight compressor turns one weight matrix (plus calibration
// statistics of its input) into a compressed form, and says for every setting it offers what it
// costs and how much output error it adds. The allocator sees only these (cost, error) options, so
// one allocator serves every compressor and can mix them.
//
// Algorithms are plain functions in their family folders (lowrank/, prune/, quant/); each class
// here is a thin adapter that the registry, recipes and the CLI use.
#include <cstdint>
#include <limits>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "strata/core/eigen.hpp"
#include "strata/core/tensor.hpp"
#include "strata/nn/ggml_linear.hpp"
#include "strata/nn/linear.hpp"

namespace strata::compress {

// What applying one option costs. bytes: what is stored for the layer; params: numbers stored
// (non-zeros for sparse forms, factor entries for low-rank); flops: multiply-adds x 2 per token.
struct Cost {
  double bytes = 0, params = 0, flops = 0;
};

// One point of a layer's rate-distortion curve.
struct Option {
  std::string knob;  // the compressor's own setting, e.g. "rank=96", "q4_k", "sparsity=0.5,pattern=2:4"
  Cost cost;
  // Relative output error on the calibration inputs: tr(dW H dW^T) / tr(W H W^T) with H = X^T X / N,
  // i.e. ||(W - W') X||_F^2 / ||W X||_F^2. Plain relative weight error when no H is available.
  double error = std::numeric_limits<double>::quiet_NaN();
};

// A weight matrix [out, in] (row-major, as engines store it) and its name. knobs() and cost() read
// only the shape, so a shape_only() layer (no weights) is enough for them.
struct Layer {
  std::string name;
  const RowMatrix<float>* weight = nullptr;
  int64_t shape_rows = 0, shape_cols = 0;  // used when weight is null
  int64_t rows() const { return weight != nullptr ? weight->rows() : shape_rows; }
  int64_t cols() const { return weight != nullptr ? weight->cols() : shape_cols; }
  static Layer shape_only(std::string name, int64_t rows, int64_t cols) { return {std::move(name), nullptr, rows, cols}; }
};
// What knobs() and cost() check: a non-empty shape (weights or not). Throws naming the layer.
void check_shape(const Layer& layer);

// Calibration statistics of the layer's input; compressors use what they need and throw
// strata::Error naming the layer when something they need is missing.
struct LayerCalibration {
  const Matrix<double>* hessian = nullptr;   // H = X^T X / N, [in, in]
  const Vector<double>* mean_sq = nullptr;   // E[x_j^2] per input channel (llama.cpp's imatrix)
  const Vector<double>* mean_abs = nullptr;  // E|x_j| per input channel
  int64_t tokens = 0;
};

// What a compressor stores for one layer. Bytes are counted from `tensors`, so reported cost and
// what is written can never disagree.
struct Compressed {
  std::string method;  // registry name of the compressor
  std::string knob;
  int64_t rows = 0, cols = 0;
  std::map<std::string, Tensor> tensors;
  nlohmann::json meta = nlohmann::json::object();
  uint64_t stored_bytes() const;
};

class WeightCompressor {
 public:
  virtual ~WeightCompressor() = default;
  virtual std::string_view name() const = 0;  // "quant.gptq", "prune.wanda", "lowrank.svdllm"
  virtual std::string_view description() const = 0;
  // Whether apply() needs the Hessian (the Gram matrix) or only channel statistics or nothing.
  virtual bool needs_hessian() const { return false; }
  // Whether apply() reads the Hessian when it is given (some use it optionally: ASVD's scaling, AWQ's
  // search objective, a structured refit). When false, callers may leave it null and save forming it.
  virtual bool reads_hessian() const { return true; }

  // The settings this compressor offers for a layer, cheapest first.
  virtual std::vector<std::string> knobs(const Layer& layer) const = 0;
  // Exact cost of a setting, without compressing.
  virtual Cost cost(const Layer& layer, std::string_view knob) const = 0;
  virtual Compressed apply(const Layer& layer, const LayerCalibration& calib, std::string_view knob) const = 0;
  // The float32 weights the compressed form stands for, [rows, cols].
  virtual RowMatrix<float> reconstruct(const Compressed& c) const = 0;

  // Every knob with its cost and error.
  std::vector<Option> options(const Layer& layer, const LayerCalibration& calib) const {
    return options_for(layer, calib, knobs(layer));
  }
  // The given knobs (in that order) with their costs and errors. The default applies and
  // reconstructs each knob; compressors with a cheaper exact curve (SVD-LLM's spectrum from one
  // factorization, SparseGPT's one Hessian factorization) override it.
  virtual std::vector<Option> options_for(const Layer& layer, const LayerCalibration& calib,
                                          const std::vector<std::string>& knobs) const;
  // A linear layer for the engine computing with the compressed form. The default reconstructs
  // dense float32 weights; forms with a faster product (low-rank factors) override it.
  virtual std::shared_ptr<const nn::Linear> to_linear(const Compressed& c) const;
  // The compressed form as a token embedding table (looked up a row at a time). The default
  // reconstructs float32; forms that can decode one row (ggml blocks) override it.
  virtual std::shared_ptr<const nn::Embedding> to_embedding(const Compressed& c) const;
  // As to_linear / to_embedding for a form the caller shares: a layer that computes from the form's
  // own bytes keeps the form alive instead of copying them. Each returns the layer and the bytes it
  // holds beyond the form (0 when it borrows them), for callers that bound their memory. The
  // defaults call to_linear / to_embedding and count the whole layer.
  virtual std::pair<std::shared_ptr<const nn::Linear>, uint64_t> linear_sharing(
      std::shared_ptr<const Compressed> c) const;
  virtual std::pair<std::shared_ptr<const nn::Embedding>, uint64_t> embedding_sharing(
      std::shared_ptr<const Compressed> c) const;
};

// tr(dW H dW^T) / tr(W H W^T) (the relative output error), or ||dW||^2 / ||W||^2 when H is null.
double output_error(const RowMatrix<float>& w, const RowMatrix<float>& w_hat, const Matrix<double>* hessian);

// output_error for many approximations of one weight: tr(W H W^T) and a float32 copy of H's Cholesky
// factor (pivoted where H is only semidefinite) are made once, and each tr(dW H dW^T) = ||dW P L||^2
// is one single-precision triangular product (BLAS) whose squares accumulate in double. Relative to an all-double evaluation the error carries
// about 1e-6 relative rounding, far below the differences between options. `w` and `hessian` must
// outlive the meter.
class OutputErrorMeter {
 public:
  OutputErrorMeter(const RowMatrix<float>& w, const Matrix<double>* hessian);
  double operator()(const RowMatrix<float>& w_hat) const;

 private:
  double quadratic(const RowMatrix<float>& d) const;  // tr(d H d^T), or ||d||^2 without H
  const RowMatrix<float>& w_;
  bool weighted_ = false;
  RowMatrix<float> l_;         // lower-triangular factor of H's (pivoted) Cholesky, float32
  std::vector<int64_t> order_; // the pivot order of H's columns
  double denominator_ = 0;
};

// All compressors strata ships, in one explicit list (static self-registration would be dropped by
// the linker from a static library).
const std::vector<std::unique_ptr<WeightCompressor>>& registry();
// Throws strata::Error listing the known names when `name` is not registered.
const WeightCompressor& find_compressor(std::string_view name);

// Knob strings are comma-separated key=value pairs ("bits=4,group=128"); a bare word is a key
// with an empty value ("q4_k").
std::map<std::string, std::string> parse_knob(std::string_view knob);
int64_t knob_int(const std::map<std::string, std::string>& kv, const std::string& key, std::string_view knob);
double knob_double(const std::map<std::string, std::string>& kv, const std::string& key, std::string_view knob);

}  // namespace strata::compress
