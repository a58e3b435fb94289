#include "strata/compress/compressor.hpp"

#include <sstream>

namespace strata::compress {

uint64_t Compressed::stored_bytes() const {
  uint64_t total = 0;
  for (const auto& [name, t] : tensors) total += t.nbytes();
  return total;
}

double output_error(const RowMatrix<float>& w, const RowMatrix<float>& w_hat, const Matrix<double>* hessian) {
  require(w.rows() == w_hat.rows() && w.cols() == w_hat.cols(), "output_error: shapes differ, [", w.rows(), ", ",
          w.cols(), "] vs [", w_hat.rows(), ", ", w_hat.cols(), "]");
  const RowMatrix<double> wd = w.cast<double>();
  const RowMatrix<double> dw = wd - w_hat.cast<double>();
  if (hessian == nullptr) {
    const double denom = wd.squaredNorm();
    return denom > 0 ? dw.squaredNorm() / denom : 0.0;
  }
  require(hessian->rows() == w.cols() && hessian->cols() == w.cols(), "output_error: Hessian is [", hessian->rows(),
          ", ", hessian->cols(), "] for a layer with ", w.cols(), " inputs");
  const double num = ((dw * *hessian).array() * dw.array()).sum();
  const double denom = ((wd * *hessian).array() * wd.array()).sum();
  return denom > 0 ? std::max(num, 0.0) / denom : 0.0;
}

void check_shape(const Layer& layer) {
  require(layer.rows() > 0 && layer.cols() > 0, "layer '", layer.name, "': no weight shape (", layer.rows(), " x ",
          layer.cols(), ")");
}

std::vector<Option> WeightCompressor::options_for(const Layer& layer, const LayerCalibration& calib,
                                                  const std::vector<std::string>& knobs) const {
  std::vector<Option> out;
  for (const auto& knob : knobs) {
    const Compressed c = apply(layer, calib, knob);
    const RowMatrix<float> w_hat = reconstruct(c);
    out.push_back({knob, cost(layer, knob), output_error(*layer.weight, w_hat, calib.hessian)});
  }
  return out;
}

std::shared_ptr<const nn::Linear> WeightCompressor::to_linear(const Compressed& c) const {
  return std::make_shared<nn::DenseLinear>(reconstruct(c));
}

std::shared_ptr<const nn::Embedding> WeightCompressor::to_embedding(const Compressed& c) const {
  return std::make_shared<nn::DenseEmbedding>(std::make_shared<const RowMatrix<float>>(reconstruct(c)));
}

std::map<std::string, std::string> parse_knob(std::string_view knob) {
  std::map<std::string, std::string> kv;
  size_t pos = 0;
  while (pos <= knob.size()) {
    const size_t comma = std::min(knob.find(',', pos), knob.size());
    const std::string_view item = knob.substr(pos, comma - pos);
    if (!item.empty()) {
      const size_t eq = item.find('=');
      const std::string key(item.substr(0, eq));
      require(!key.empty(), "knob '", knob, "': empty key");
      require(!kv.count(key), "knob '", knob, "': '", key, "' given twice");
      kv[key] = eq == std::string_view::npos ? std::string() : std::string(item.substr(eq + 1));
    }
    pos = comma + 1;
  }
  return kv;
}

int64_t knob_int(const std::map<std::string, std::string>& kv, const std::string& key, std::string_view knob) {
  auto it = kv.find(key);
  require(it != kv.end(), "knob '", knob, "': missing '", key, "='");
  try {
    size_t used = 0;
    const long long v = std::stoll(it->second, &used);
    require(used == it->second.size(), "");
    return v;
  } catch (const std::exception&) {
    fail("knob '", knob, "': '", key, "' must be an integer, got '", it->second, "'");
  }
}

double knob_double(const std::map<std::string, std::string>& kv, const std::string& key, std::string_view knob) {
  auto it = kv.find(key);
  require(it != kv.end(), "knob '", knob, "': missing '", key, "='");
  try {
    size_t used = 0;
    const double v = std::stod(it->second, &used);
    require(used == it->second.size(), "");
    return v;
  } catch (const std::exception&) {
    fail("knob '", knob, "': '", key, "' must be a number, got '", it->second, "'");
  }
}

}  // namespace strata::compress
