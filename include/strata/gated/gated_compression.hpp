#pragma once
// GatedCompression: an early gate with a compressed hand-off, placed after layer k of a BERT encoder
// (after the idea of "Gated Compression Layers for Efficient Always-On Models", Li et al. 2023).
//
//   tokens -> layers [0, k) -> mean pooling -> logistic gate -> logit < threshold: stop (negative)
//                                                           \-> logit >= threshold: encode the layer-k
//                                                               states (ActivationCodec) -> payload
//   payload -> decode -> layers [k, L) -> mean pooling + L2 norm -> the task's head
//
// The threshold is calibrated on a calibration split for a target recall on positives, so a known
// share of the positives go on while most negatives stop after k of L layers.
#include <cstdint>
#include <span>
#include <vector>

#include "strata/core/eigen.hpp"
#include "strata/core/tensor.hpp"
#include "strata/gated/codec.hpp"
#include "strata/gated/logistic.hpp"
#include "strata/nn/bert.hpp"
#include "strata/nn/tokenizer.hpp"

namespace strata::gated {

// Mean of each sequence's rows of packed states [sum(tokens), dim] -> [tokens.size(), dim], not
// normalised: the gate's features. Throws strata::Error naming "tokens" for an empty sequence.
RowMatrix<float> mean_pool(std::span<const int64_t> tokens, const float* states, int64_t dim);

// Multiply-adds x 2 of BERT layers [begin, end) on one sequence of `tokens` tokens: the six linear
// layers (4 dim^2 + 2 dim hidden per token) and attention's two products (2 tokens^2 dim).
double encoder_flops(const nn::BertConfig& config, int64_t tokens, int64_t begin, int64_t end);

class GatedCompression {
 public:
  // The gate: fit_logistic on train features [n, dim] (mean-pooled layer-`layer` states) with labels;
  // its threshold: threshold_for_recall of its logits on the calibration split. Throws strata::Error
  // naming "layer" (outside [1, n_layers)), "recall", "features"/"labels" (via fit_logistic and
  // threshold_for_recall), or the codec's dim when it differs from the features'.
  static GatedCompression fit(const nn::BertConfig& config, int64_t layer, const RowMatrix<float>& train_features,
                              std::span<const uint8_t> train_labels, const RowMatrix<float>& calibration_features,
                              std::span<const uint8_t> calibration_labels, double recall, ActivationCodec codec,
                              const LogisticOptions& logistic = {});

  int64_t layer() const { return layer_; }
  const LogisticModel& gate() const { return gate_; }
  double threshold() const { return threshold_; }
  // Another operating point for the same gate (a sweep over thresholds).
  void set_threshold(double threshold) { threshold_ = threshold; }
  const ActivationCodec& codec() const { return codec_; }
  void set_codec(ActivationCodec codec);

  struct Front {
    std::vector<double> logits;                  // the gate's logit per sequence
    std::vector<uint8_t> passed;                 // logit >= threshold
    std::vector<std::vector<uint8_t>> payloads;  // the encoded layer-k states; empty when stopped
    Tensor states;                               // packed layer-k states of the whole batch
  };
  // Layers [0, layer) on the batch, the gate on each sequence, and the payloads of those that pass.
  Front front(const nn::BertEncoder& encoder, const nn::TokenBatch& batch) const;
  // Decodes payloads (each one sequence), runs layers [layer, L) and pools them: unit-length
  // embeddings [payloads.size(), dim], in order. Throws strata::Error for a corrupted payload.
  Tensor back(const nn::BertEncoder& encoder, std::span<const std::vector<uint8_t>> payloads) const;

 private:
  int64_t layer_ = 0;
  LogisticModel gate_;
  double threshold_ = 0.0;
  ActivationCodec codec_;
};

}  // namespace strata::gated
