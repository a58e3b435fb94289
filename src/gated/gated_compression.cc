// The gate after an early encoder layer and the compressed hand-off to the layers after it.
#include "strata/gated/gated_compression.hpp"

#include <algorithm>

#include "strata/core/error.hpp"

namespace strata::gated {

RowMatrix<float> mean_pool(std::span<const int64_t> tokens, const float* states, int64_t dim) {
  RowMatrix<float> out(static_cast<int64_t>(tokens.size()), dim);
  int64_t row = 0;
  for (std::size_t s = 0; s < tokens.size(); ++s) {
    const int64_t n = tokens[s];
    require(n > 0, "mean_pool: tokens[", s, "] is ", n, "; every sequence needs a token");
    const Eigen::Map<const RowMatrix<float>> x(states + row * dim, n, dim);
    out.row(static_cast<int64_t>(s)) = x.colwise().sum() / static_cast<float>(n);
    row += n;
  }
  return out;
}

double encoder_flops(const nn::BertConfig& config, int64_t tokens, int64_t begin, int64_t end) {
  const auto n = static_cast<double>(tokens), d = static_cast<double>(config.dim),
             h = static_cast<double>(config.hidden_dim);
  const double per_layer = 2.0 * n * (4.0 * d * d + 2.0 * d * h) + 4.0 * n * n * d;
  return per_layer * static_cast<double>(std::max<int64_t>(0, end - begin));
}

GatedCompression GatedCompression::fit(const nn::BertConfig& config, int64_t layer,
                                       const RowMatrix<float>& train_features, std::span<const uint8_t> train_labels,
                                       const RowMatrix<float>& calibration_features,
                                       std::span<const uint8_t> calibration_labels, double recall,
                                       ActivationCodec codec, const LogisticOptions& logistic) {
  require(layer >= 1 && layer < config.n_layers, "GatedCompression: layer ", layer, " is outside [1, ",
          config.n_layers, "); the gate sits after an early layer and before the last");
  require(recall > 0 && recall <= 1, "GatedCompression: recall must be in (0, 1], got ", recall);
  require(train_features.cols() == config.dim, "GatedCompression: train features have ", train_features.cols(),
          " columns, the encoder's width is ", config.dim);
  require(calibration_features.rows() > 0, "GatedCompression: the calibration split is empty");
  require(calibration_features.cols() == config.dim, "GatedCompression: calibration features have ",
          calibration_features.cols(), " columns, the encoder's width is ", config.dim);
  GatedCompression g;
  g.layer_ = layer;
  g.gate_ = fit_logistic(train_features, train_labels, logistic);
  const Vector<double> z = g.gate_.logits(calibration_features);
  g.threshold_ = threshold_for_recall(std::span<const double>(z.data(), static_cast<std::size_t>(z.size())),
                                      calibration_labels, recall);
  g.set_codec(std::move(codec));
  return g;
}

void GatedCompression::set_codec(ActivationCodec codec) {
  require(codec.dim() == gate_.features(), "GatedCompression: the codec's dim ", codec.dim(),
          " differs from the gate's ", gate_.features());
  codec_ = std::move(codec);
}

GatedCompression::Front GatedCompression::front(const nn::BertEncoder& encoder, const nn::TokenBatch& batch) const {
  const int64_t dim = encoder.config().dim;
  require(dim == gate_.features(), "GatedCompression: the encoder's width ", dim, " differs from the gate's ",
          gate_.features());
  Front f;
  f.states = encoder.run_layers(batch, encoder.input_states(batch), 0, layer_);
  std::vector<int64_t> tokens(static_cast<std::size_t>(batch.size));
  for (int64_t s = 0; s < batch.size; ++s) tokens[static_cast<std::size_t>(s)] = batch.tokens(s);
  const float* x = f.states.view<const float>().data();
  const RowMatrix<float> pooled = mean_pool(tokens, x, dim);
  const Vector<double> z = gate_.logits(pooled);
  f.logits.assign(z.data(), z.data() + z.size());
  f.passed.resize(tokens.size());
  f.payloads.resize(tokens.size());
  int64_t row = 0;
  for (std::size_t s = 0; s < tokens.size(); ++s) {
    f.passed[s] = f.logits[s] >= threshold_;
    if (f.passed[s]) f.payloads[s] = codec_.encode(x + row * dim, tokens[s]);
    row += tokens[s];
  }
  return f;
}

Tensor GatedCompression::back(const nn::BertEncoder& encoder, std::span<const std::vector<uint8_t>> payloads) const {
  const int64_t dim = encoder.config().dim;
  require(dim == codec_.dim(), "GatedCompression: the encoder's width ", dim, " differs from the codec's ",
          codec_.dim());
  // The layers after the gate need only each sequence's length: the states carry the rest.
  nn::TokenBatch batch;
  batch.size = static_cast<int64_t>(payloads.size());
  std::vector<RowMatrix<float>> decoded;
  decoded.reserve(payloads.size());
  int64_t total = 0;
  for (const auto& p : payloads) {
    decoded.push_back(codec_.decode(p));
    batch.length = std::max(batch.length, decoded.back().rows());
    total += decoded.back().rows();
  }
  batch.ids.assign(static_cast<std::size_t>(batch.size * batch.length), 0);
  batch.attention_mask.assign(batch.ids.size(), 0);
  Tensor states(DType::f32, Shape{total, dim});
  float* out = states.view<float>().data();
  for (std::size_t s = 0; s < decoded.size(); ++s) {
    const auto n = decoded[s].rows();
    std::fill_n(batch.attention_mask.begin() + static_cast<std::ptrdiff_t>(s) * batch.length, n, 1);
    std::copy(decoded[s].data(), decoded[s].data() + decoded[s].size(), out);
    out += decoded[s].size();
  }
  return encoder.pool(batch, encoder.run_layers(batch, states, layer_, encoder.config().n_layers));
}

}  // namespace strata::gated
