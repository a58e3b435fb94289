#include "strata/kv/merge.hpp"

#include <algorithm>
#include <cmath>
#include <numbers>

#include "strata/core/error.hpp"

namespace strata::kv {

namespace {

void check_pair(const RowMatrix<float>& a, const RowMatrix<float>& b, const char* fn) {
  require(a.rows() == b.rows() && a.cols() == b.cols() && a.cols() > 0, fn, ": the caches [", a.rows(), ", ",
          a.cols(), "] and [", b.rows(), ", ", b.cols(), "] must have the same tokens and head_dim");
  require(a.allFinite() && b.allFinite(), fn, ": a cache has a non-finite value");
}

// Omega of two rows, computed in double; zero rows count as aligned.
double angle(const RowMatrix<float>& a, const RowMatrix<float>& b, int64_t i, double& na, double& nb) {
  const auto ra = a.row(i).cast<double>(), rb = b.row(i).cast<double>();
  na = ra.norm();
  nb = rb.norm();
  if (na == 0 || nb == 0) return 0;
  return std::acos(std::clamp(ra.dot(rb) / (na * nb), -1.0, 1.0));
}

}  // namespace

Vector<float> angular_distances(const RowMatrix<float>& a, const RowMatrix<float>& b) {
  check_pair(a, b, "kv::angular_distances");
  Vector<float> d(a.rows());
  double na, nb;
  for (int64_t i = 0; i < a.rows(); ++i) d(i) = static_cast<float>(angle(a, b, i, na, nb) / std::numbers::pi);
  return d;
}

double relative_threshold(const Vector<float>& distances, double gamma) {
  require(distances.size() > 0, "kv::relative_threshold: no distances");
  require(gamma >= 0 && gamma <= 1, "kv::relative_threshold: gamma must be in [0, 1], got ", gamma);
  const double lo = distances.minCoeff(), hi = distances.maxCoeff();
  return lo + gamma * (hi - lo);
}

MergedPair merge(const RowMatrix<float>& a, const RowMatrix<float>& b, const MergeOptions& options) {
  check_pair(a, b, "kv::merge");
  require(options.t >= 0 && options.t <= 1, "kv::merge: t must be in [0, 1], got ", options.t);
  require(options.retain_distance >= 0 && options.retain_distance <= 1,
          "kv::merge: retain_distance must be in [0, 1], got ", options.retain_distance);
  const int64_t n = a.rows(), d = a.cols();
  const double t = options.t;

  MergedPair m;
  m.tokens = n;
  m.head_dim = d;
  std::vector<double> omega(static_cast<size_t>(n)), na(static_cast<size_t>(n)), nb(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    const size_t k = static_cast<size_t>(i);
    omega[k] = angle(a, b, i, na[k], nb[k]);
    if (omega[k] / std::numbers::pi > options.retain_distance) m.retained.push_back(static_cast<int32_t>(i));
  }
  const int64_t r = static_cast<int64_t>(m.retained.size()), merged = n - r;
  m.direction.resize(merged, d);
  m.norm_a.resize(merged);
  m.norm_b.resize(merged);
  m.retained_a.resize(r, d);
  m.retained_b.resize(r, d);

  int64_t mi = 0, ri = 0;
  for (int64_t i = 0; i < n; ++i) {
    const size_t k = static_cast<size_t>(i);
    if (ri < r && m.retained[static_cast<size_t>(ri)] == i) {
      m.retained_a.row(ri) = a.row(i);
      m.retained_b.row(ri) = b.row(i);
      ++ri;
      continue;
    }
    Vector<double> e = Vector<double>::Zero(d);
    const double w = omega[k];
    if (na[k] > 0 && nb[k] > 0) {
      const Vector<double> u = a.row(i).cast<double>().transpose() / na[k];
      const Vector<double> v = b.row(i).cast<double>().transpose() / nb[k];
      // Below ~1e-6 rad sin(Omega) loses its digits; the weights tend to 1 - t and t there.
      e = w > 1e-6 ? ((std::sin((1 - t) * w) * u + std::sin(t * w) * v) / std::sin(w)).eval()
                   : ((1 - t) * u + t * v).eval();
    } else if (na[k] > 0) {
      e = a.row(i).cast<double>().transpose() / na[k];
    } else if (nb[k] > 0) {
      e = b.row(i).cast<double>().transpose() / nb[k];
    }
    const double en = e.norm();
    if (en > 0) e /= en;
    m.direction.row(mi) = e.cast<float>().transpose();
    m.norm_a(mi) = static_cast<float>(na[k]);
    m.norm_b(mi) = static_cast<float>(nb[k]);
    ++mi;
  }
  return m;
}

RowMatrix<float> MergedPair::restore(int layer) const {
  require(layer == 0 || layer == 1, "kv::MergedPair::restore: layer must be 0 or 1, got ", layer);
  const Vector<float>& norms = layer == 0 ? norm_a : norm_b;
  const RowMatrix<float>& kept = layer == 0 ? retained_a : retained_b;
  RowMatrix<float> out(tokens, head_dim);
  int64_t mi = 0, ri = 0;
  const int64_t r = static_cast<int64_t>(retained.size());
  for (int64_t i = 0; i < tokens; ++i) {
    if (ri < r && retained[static_cast<size_t>(ri)] == i) {
      out.row(i) = kept.row(ri++);
    } else {
      out.row(i) = (direction.row(mi).cast<double>() * static_cast<double>(norms(mi))).cast<float>();
      ++mi;
    }
  }
  return out;
}

uint64_t MergedPair::bytes() const {
  return static_cast<uint64_t>(direction.size() + norm_a.size() + norm_b.size() + retained_a.size() +
                               retained_b.size()) * sizeof(float) +
         retained.size() * sizeof(int32_t);
}

}  // namespace strata::kv
