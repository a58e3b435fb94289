// Structured pruning on a whole model: FFN neurons (rows of gate/up with the matching columns of
// down) and whole blocks (ShortGPT); and its per-tensor core, a layer's input channels.
//
// The engine's set_linear keeps every layer's shape, so nothing here renumbers the hidden dimension.
// Pruned neurons are represented by SubmatrixLinear layers that store and multiply only the kept
// rows / columns, which computes exactly what the smaller layers of a physically pruned model
// compute (silu(0) * 0 = 0 for a removed neuron) at their cost; removed blocks become ZeroLinear
// layers, which make the residual block an exact identity.
#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <set>
#include <sstream>

#include "strata/compress/prune/prune.hpp"
#include "strata/linalg/decompositions.hpp"

namespace strata::compress::prune {

SubmatrixLinear::SubmatrixLinear(int64_t out, int64_t in, std::vector<int64_t> rows, std::vector<int64_t> cols,
                                 RowMatrix<float> weight)
    : out_(out), in_(in), rows_(std::move(rows)), cols_(std::move(cols)), weight_(std::move(weight)) {
  const auto check = [](const std::vector<int64_t>& idx, int64_t limit, const char* what) {
    for (size_t i = 0; i < idx.size(); ++i)
      require(idx[i] >= 0 && idx[i] < limit && (i == 0 || idx[i] > idx[i - 1]), "SubmatrixLinear: ", what,
              " indices must be ascending and in [0, ", limit, "), got ", idx[i], " at position ", i);
  };
  require(out > 0 && in > 0, "SubmatrixLinear: shape [", out, ", ", in, "] must be positive");
  check(rows_, out, "row");
  check(cols_, in, "column");
  const int64_t kr = rows_.empty() ? out : static_cast<int64_t>(rows_.size());
  const int64_t kc = cols_.empty() ? in : static_cast<int64_t>(cols_.size());
  require(weight_.rows() == kr && weight_.cols() == kc, "SubmatrixLinear: weight is [", weight_.rows(), ", ",
          weight_.cols(), "], the kept rows and columns make [", kr, ", ", kc, "]");
}

void SubmatrixLinear::forward(const float* x, int64_t tokens, float* y) const {
  const int64_t kr = weight_.rows(), kc = weight_.cols();
  std::vector<float> gathered;
  const float* xin = x;
  if (!cols_.empty()) {
    gathered.resize(static_cast<size_t>(tokens * kc));
    for (int64_t t = 0; t < tokens; ++t)
      for (int64_t c = 0; c < kc; ++c) gathered[static_cast<size_t>(t * kc + c)] = x[t * in_ + cols_[static_cast<size_t>(c)]];
    xin = gathered.data();
  }
  if (rows_.empty()) {
    nn::matmul_wt(xin, tokens, weight_.data(), kr, kc, y);
    return;
  }
  std::vector<float> ys(static_cast<size_t>(tokens * kr));
  nn::matmul_wt(xin, tokens, weight_.data(), kr, kc, ys.data());
  std::fill(y, y + tokens * out_, 0.0f);
  for (int64_t t = 0; t < tokens; ++t)
    for (int64_t r = 0; r < kr; ++r) y[t * out_ + rows_[static_cast<size_t>(r)]] = ys[static_cast<size_t>(t * kr + r)];
}

RowMatrix<float> SubmatrixLinear::dense_weight() const {
  RowMatrix<float> w = RowMatrix<float>::Zero(out_, in_);
  for (int64_t r = 0; r < weight_.rows(); ++r) {
    const int64_t rr = rows_.empty() ? r : rows_[static_cast<size_t>(r)];
    for (int64_t c = 0; c < weight_.cols(); ++c) w(rr, cols_.empty() ? c : cols_[static_cast<size_t>(c)]) = weight_(r, c);
  }
  return w;
}

uint64_t SubmatrixLinear::weight_bytes() const {
  // float32 weights plus the kept indices as int32.
  return static_cast<uint64_t>(weight_.size()) * sizeof(float) + (rows_.size() + cols_.size()) * sizeof(int32_t);
}

std::string SubmatrixLinear::describe() const {
  std::ostringstream s;
  s << "submatrix f32 [" << weight_.rows() << ", " << weight_.cols() << "] of [" << out_ << ", " << in_ << "]";
  return s.str();
}

ZeroLinear::ZeroLinear(int64_t out, int64_t in) : out_(out), in_(in) {
  require(out > 0 && in > 0, "ZeroLinear: shape [", out, ", ", in, "] must be positive");
}

void ZeroLinear::forward(const float*, int64_t tokens, float* y) const { std::fill(y, y + tokens * out_, 0.0f); }

std::string ZeroLinear::describe() const {
  std::ostringstream s;
  s << "zero [" << out_ << ", " << in_ << "]";
  return s.str();
}

Vector<double> ffn_neuron_importance(const RowMatrix<float>& down, const Vector<double>& down_input_mean_sq) {
  require(down_input_mean_sq.size() == down.cols(), "ffn_neuron_importance: ffn_down has ", down.cols(),
          " inputs, the statistics ", down_input_mean_sq.size());
  Vector<double> imp(down.cols());
  for (int64_t i = 0; i < down.cols(); ++i) {
    const double ms = down_input_mean_sq[i];
    require(std::isfinite(ms) && ms >= 0, "ffn_neuron_importance: mean square of neuron ", i, " is ", ms);
    imp[i] = down.col(i).cast<double>().norm() * std::sqrt(ms);
  }
  return imp;
}

namespace {

std::string tensor_name(int64_t block, const char* slot) { return "blk." + std::to_string(block) + "." + slot + ".weight"; }

// The kept columns refit by damped least squares on the input Gram matrix H:
// W_K + W_P H_PK (H_KK + lambda I)^-1, the least-squares optimum when lambda = 0.
RowMatrix<float> refit_kept_columns(const RowMatrix<float>& down, const Matrix<double>& h, const std::vector<int64_t>& kept,
                                  double damp, const std::string& name) {
  const int64_t hidden = down.cols(), dim = down.rows(), k = static_cast<int64_t>(kept.size());
  std::vector<int64_t> pruned;
  for (int64_t i = 0, next = 0; i < hidden; ++i) {
    if (next < k && kept[static_cast<size_t>(next)] == i) {
      ++next;
    } else {
      pruned.push_back(i);
    }
  }
  const int64_t p = static_cast<int64_t>(pruned.size());
  RowMatrix<float> out(dim, k);
  for (int64_t c = 0; c < k; ++c) out.col(c) = down.col(kept[static_cast<size_t>(c)]);
  if (p == 0) return out;
  Matrix<double> hkk(k, k), hkp(k, p), wp_t(p, dim);
  for (int64_t a = 0; a < k; ++a) {
    for (int64_t b = 0; b < k; ++b) hkk(a, b) = h(kept[static_cast<size_t>(a)], kept[static_cast<size_t>(b)]);
    for (int64_t b = 0; b < p; ++b) hkp(a, b) = h(kept[static_cast<size_t>(a)], pruned[static_cast<size_t>(b)]);
  }
  for (int64_t b = 0; b < p; ++b) wp_t.row(b) = down.col(pruned[static_cast<size_t>(b)]).cast<double>().transpose();
  const double mean_diag = hkk.diagonal().mean();
  if (!(mean_diag > 0)) return out;  // the kept neurons never fired: nothing to refit against
  hkk.diagonal().array() += damp * mean_diag;
  // rhs = H_KP W_P^T [k, dim]; the correction is (H_KK + lambda I)^-1 rhs, transposed.
  Matrix<double> rhs(k, dim);
  cblas_dgemm(CblasColMajor, CblasNoTrans, CblasNoTrans, static_cast<int>(k), static_cast<int>(dim), static_cast<int>(p),
              1.0, hkp.data(), static_cast<int>(k), wp_t.data(), static_cast<int>(p), 0.0, rhs.data(), static_cast<int>(k));
  linalg::CholeskyResult<double> chol;
  try {
    chol = linalg::cholesky<double>(hkk);
  } catch (const Error& e) {
    fail("layer '", name, "': refitting the kept input channels: ", e.what());
  }
  const Matrix<double> y = linalg::solve_triangular<double>(chol.L, rhs, linalg::Triangle::lower);
  const Matrix<double> delta = linalg::solve_triangular<double>(chol.L, y, linalg::Triangle::lower, linalg::Transpose::yes);
  out += delta.transpose().cast<float>();
  return out;
}

}  // namespace

int64_t kept_channels(int64_t cols, double keep) {
  require(std::isfinite(keep) && keep > 0 && keep <= 1, "keep must be in (0, 1], got ", keep);
  const int64_t k = cols - static_cast<int64_t>(std::floor((1 - keep) * static_cast<double>(cols) + 1e-9));
  require(k >= 1, "keep=", keep, " of ", cols, " input channels keeps none");
  return k;
}

ChannelPruned prune_input_channels(const RowMatrix<float>& w, int64_t keep, const Vector<double>* mean_sq,
                                   const Matrix<double>* h, double damp, std::string_view name) {
  detail::check_weight(w, name);
  const int64_t cols = w.cols();
  require(keep >= 1 && keep <= cols, "layer '", name, "': keeping ", keep, " of ", cols, " input channels");
  require(std::isfinite(damp) && damp >= 0, "layer '", name, "': damp must be >= 0, got ", damp);
  require(h == nullptr || (h->rows() == cols && h->cols() == cols), "layer '", name, "': Hessian is [",
          h ? h->rows() : 0, ", ", h ? h->cols() : 0, "] for a weight with ", cols, " inputs");
  Vector<double> imp;
  if (mean_sq != nullptr) {
    try {
      imp = ffn_neuron_importance(w, *mean_sq);
    } catch (const Error& e) {
      fail("layer '", name, "': ", e.what());
    }
  } else {
    imp = w.cast<double>().colwise().norm().transpose();
  }
  std::vector<int64_t> order(static_cast<size_t>(cols));
  std::iota(order.begin(), order.end(), int64_t{0});
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return imp[a] > imp[b]; });
  ChannelPruned out;
  out.kept.assign(order.begin(), order.begin() + keep);
  std::sort(out.kept.begin(), out.kept.end());
  if (h != nullptr) {
    out.weight = refit_kept_columns(w, *h, out.kept, damp, std::string(name));
  } else {
    out.weight.resize(w.rows(), keep);
    for (int64_t c = 0; c < keep; ++c) out.weight.col(c) = w.col(out.kept[static_cast<size_t>(c)]);
  }
  return out;
}

nn::LlamaModel prune_ffn_neurons(const nn::LlamaModel& model, const nn::Calibration& calibration,
                                 const NeuronPruningOptions& options, NeuronPruningReport* report) {
  const nn::LlamaConfig& c = model.config();
  require(std::isfinite(options.fraction) && options.fraction >= 0 && options.fraction < 1,
          "prune_ffn_neurons: fraction must be in [0, 1), got ", options.fraction);
  require(std::isfinite(options.damp) && options.damp >= 0, "prune_ffn_neurons: damp must be >= 0, got ", options.damp);
  const int64_t hidden = c.hidden_dim;
  const int64_t keep = kept_channels(hidden, 1 - options.fraction);
  nn::LlamaModel out = model.clone();
  NeuronPruningReport rep;
  rep.compensated = options.compensate;
  for (int64_t l = 0; l < c.n_layers; ++l) {
    const std::string gate = tensor_name(l, "ffn_gate"), up = tensor_name(l, "ffn_up"), down = tensor_name(l, "ffn_down");
    const nn::InputStats& stats = calibration.stats(down);
    require(stats.tokens > 0, "prune_ffn_neurons: no calibration tokens for '", down, "'");
    const RowMatrix<float> wd = model.linear(down).dense_weight();
    const Vector<double> mean_sq = stats.mean_sq();
    Matrix<double> h;
    if (options.compensate) {
      require(stats.has_gram, "prune_ffn_neurons: compensation needs the Gram matrix of '", down,
              "' (calibrate with CalibrationOptions::gram, or set compensate = false)");
      h = stats.hessian();
    }
    ChannelPruned pruned =
        prune_input_channels(wd, keep, &mean_sq, options.compensate ? &h : nullptr, options.damp, down);
    std::vector<int64_t> kept = std::move(pruned.kept);

    rep.bytes_before += model.linear(gate).weight_bytes() + model.linear(up).weight_bytes() + model.linear(down).weight_bytes();
    const RowMatrix<float> wg = model.linear(gate).dense_weight(), wu = model.linear(up).dense_weight();
    RowMatrix<float> g(keep, c.dim), u(keep, c.dim);
    for (int64_t r = 0; r < keep; ++r) {
      g.row(r) = wg.row(kept[static_cast<size_t>(r)]);
      u.row(r) = wu.row(kept[static_cast<size_t>(r)]);
    }
    auto lg = std::make_shared<SubmatrixLinear>(hidden, c.dim, kept, std::vector<int64_t>{}, std::move(g));
    auto lu = std::make_shared<SubmatrixLinear>(hidden, c.dim, kept, std::vector<int64_t>{}, std::move(u));
    auto ld = std::make_shared<SubmatrixLinear>(c.dim, hidden, std::vector<int64_t>{}, kept, std::move(pruned.weight));
    rep.bytes_after += lg->weight_bytes() + lu->weight_bytes() + ld->weight_bytes();
    out.set_linear(gate, std::move(lg));
    out.set_linear(up, std::move(lu));
    out.set_linear(down, std::move(ld));
    rep.kept.push_back(std::move(kept));
  }
  if (report) *report = std::move(rep);
  return out;
}

std::vector<int> rank_blocks_by_influence(const nn::Calibration& calibration, int64_t n_layers) {
  const std::vector<double> bi = calibration.block_influence();
  require(static_cast<int64_t>(bi.size()) == n_layers, "rank_blocks_by_influence: calibration has block influence for ",
          bi.size(), " blocks, the model has ", n_layers, " (calibrate with CalibrationOptions::block_influence)");
  std::vector<int> order(bi.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return bi[static_cast<size_t>(a)] < bi[static_cast<size_t>(b)]; });
  return order;
}

nn::LlamaModel remove_blocks(const nn::LlamaModel& model, std::span<const int> blocks) {
  const int64_t n_layers = model.config().n_layers;
  std::set<int> seen;
  for (int b : blocks) {
    require(b >= 0 && b < n_layers, "remove_blocks: block ", b, " out of range [0, ", n_layers, ")");
    require(seen.insert(b).second, "remove_blocks: block ", b, " given twice");
  }
  nn::LlamaModel out = model.clone();
  const auto& names = model.linear_names();
  for (int b : blocks) {
    for (int s = 0; s < 7; ++s) {
      const std::string& name = names[static_cast<size_t>(b * 7 + s)];
      const nn::Linear& old = model.linear(name);
      out.set_linear(name, std::make_shared<ZeroLinear>(old.out_features(), old.in_features()));
    }
  }
  return out;
}

}  // namespace strata::compress::prune
