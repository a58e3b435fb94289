// PCA, sparsification and 8-bit quantization of hidden states into a checked byte buffer.
#include "strata/gated/codec.hpp"

#include <Eigen/Eigenvalues>
#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>

#include "strata/core/error.hpp"

namespace strata::gated {

namespace {

constexpr char kMagic[4] = {'S', 'G', 'C', '1'};
constexpr uint16_t kVersion = 1;
constexpr uint16_t kSparseFlag = 1;

template <class T>
void put(std::vector<uint8_t>& out, T v) {
  uint8_t b[sizeof(T)];
  std::memcpy(b, &v, sizeof(T));
  out.insert(out.end(), b, b + sizeof(T));
}

// Reads a T at `at`, checking the buffer length first.
template <class T>
T get(std::span<const uint8_t> in, std::size_t& at, const char* what) {
  require(at + sizeof(T) <= in.size(), "ActivationCodec: payload ends at byte ", in.size(), " inside ", what,
          " (needs ", at + sizeof(T), ")");
  T v;
  std::memcpy(&v, in.data() + at, sizeof(T));
  at += sizeof(T);
  return v;
}

// FNV-1a over the whole payload but the hash field itself: header fields are covered too.
constexpr std::size_t kHashOffset = 20;
uint32_t payload_hash(std::span<const uint8_t> p) {
  uint32_t h = 2166136261u;
  for (std::size_t i = 0; i < p.size(); ++i) {
    if (i >= kHashOffset && i < kHashOffset + 4) continue;
    h ^= p[i];
    h *= 16777619u;
  }
  return h;
}

struct Header {
  bool sparse = false;
  uint32_t dim = 0, coords = 0, tokens = 0, hash = 0;
};

}  // namespace

PcaBasis fit_pca(const RowMatrix<float>& rows, int64_t rank) {
  const int64_t n = rows.rows(), d = rows.cols();
  require(n > 0 && d > 0, "fit_pca: rows is empty (", n, " x ", d, ")");
  require(rank >= 1 && rank <= d, "fit_pca: rank ", rank, " is outside [1, ", d, "]");
  require(rows.allFinite(), "fit_pca: rows has a non-finite value");
  const Matrix<double> x = rows.cast<double>();
  const Vector<double> mu = x.colwise().mean().transpose();
  const Matrix<double> centred = x.rowwise() - mu.transpose();
  const Matrix<double> cov = centred.transpose() * centred / static_cast<double>(n);
  const Eigen::SelfAdjointEigenSolver<Matrix<double>> eig(cov);
  require(eig.info() == Eigen::Success, "fit_pca: the covariance eigen-decomposition did not converge");
  PcaBasis b;
  b.mean = mu.cast<float>();
  b.components.resize(rank, d);
  b.variances.resize(rank);
  // Eigen sorts eigenvalues ascending.
  for (int64_t k = 0; k < rank; ++k) {
    Vector<double> v = eig.eigenvectors().col(d - 1 - k);
    Eigen::Index at = 0;
    v.cwiseAbs().maxCoeff(&at);
    if (v[at] < 0) v = -v;
    b.components.row(k) = v.transpose().cast<float>();
    b.variances[k] = std::max(0.0, eig.eigenvalues()[d - 1 - k]);
  }
  return b;
}

ActivationCodec ActivationCodec::fit(const RowMatrix<float>& calibration, const CodecOptions& options) {
  const int64_t n = calibration.rows(), d = calibration.cols();
  require(n > 0 && d > 0, "ActivationCodec: calibration states are empty (", n, " x ", d, ")");
  require(calibration.allFinite(), "ActivationCodec: calibration states hold a non-finite value");
  require(options.rank >= 0 && options.rank <= d, "ActivationCodec: rank ", options.rank, " is outside [0, ", d,
          "] (0 = no projection)");
  require(d <= 65535 || options.keep == 0, "ActivationCodec: dim ", d, " is too wide for sparse indices");
  ActivationCodec c;
  c.options_ = options;
  const int64_t coords = options.rank > 0 ? options.rank : d;
  require(options.keep >= 0 && options.keep <= coords, "ActivationCodec: keep ", options.keep, " is outside [0, ",
          coords, "] (0 = every coordinate)");
  require(std::isfinite(options.threshold) && options.threshold >= 0, "ActivationCodec: threshold must be >= 0, got ",
          options.threshold);
  if (options.rank > 0) {
    PcaBasis b = fit_pca(calibration, options.rank);
    c.mean_ = std::move(b.mean);
    c.basis_ = std::move(b.components);
  } else {
    c.mean_ = calibration.cast<double>().colwise().mean().transpose().cast<float>();
  }
  return c;
}

RowMatrix<float> ActivationCodec::coordinates_of(const float* rows, int64_t tokens) const {
  require(tokens >= 0, "ActivationCodec: tokens must be >= 0, got ", tokens);
  const Eigen::Map<const RowMatrix<float>> x(rows, tokens, dim());
  RowMatrix<float> centred = x.rowwise() - mean_.transpose();
  if (options_.rank == 0) return centred;
  return centred * basis_.transpose();
}

RowMatrix<float> ActivationCodec::reconstruct(const RowMatrix<float>& coords) const {
  require(coords.cols() == coordinates(), "ActivationCodec: coordinates have ", coords.cols(), " columns, the codec ",
          coordinates());
  RowMatrix<float> x = options_.rank == 0 ? coords : RowMatrix<float>(coords * basis_);
  x.rowwise() += mean_.transpose();
  return x;
}

std::vector<uint8_t> ActivationCodec::encode(const float* rows, int64_t tokens) const {
  require(tokens >= 0 && tokens <= int64_t{UINT32_MAX}, "ActivationCodec: tokens ", tokens, " out of range");
  const Eigen::Map<const RowMatrix<float>> x(rows, tokens, dim());
  require(x.allFinite(), "ActivationCodec: the states to encode hold a non-finite value");
  const RowMatrix<float> c = coordinates_of(rows, tokens);
  const int64_t m = coordinates();
  const bool narrow = m <= 256;

  std::vector<uint8_t> out(kHeaderBytes);
  std::vector<int> order(static_cast<std::size_t>(m));
  std::vector<int> kept;
  for (int64_t t = 0; t < tokens; ++t) {
    const auto row = c.row(t);
    kept.clear();
    if (sparse()) {
      for (int j = 0; j < m; ++j)
        if (std::abs(row[j]) >= options_.threshold) kept.push_back(j);
      if (options_.keep > 0 && static_cast<int64_t>(kept.size()) > options_.keep) {
        std::nth_element(kept.begin(), kept.begin() + options_.keep - 1, kept.end(),
                         [&](int a, int b) { return std::abs(row[a]) > std::abs(row[b]) || (std::abs(row[a]) == std::abs(row[b]) && a < b); });
        kept.resize(static_cast<std::size_t>(options_.keep));
      }
      std::sort(kept.begin(), kept.end());
    } else {
      kept.resize(static_cast<std::size_t>(m));
      std::iota(kept.begin(), kept.end(), 0);
    }
    float amax = 0;
    for (int j : kept) amax = std::max(amax, std::abs(row[j]));
    const float scale = amax / 127.0f;
    const float inv = scale > 0 ? 1.0f / scale : 0.0f;
    put(out, scale);
    if (sparse()) {
      put(out, static_cast<uint16_t>(kept.size()));
      for (int j : kept) {
        if (narrow)
          put(out, static_cast<uint8_t>(j));
        else
          put(out, static_cast<uint16_t>(j));
      }
    }
    for (int j : kept) {
      const float q = std::clamp(std::nearbyint(row[j] * inv), -127.0f, 127.0f);
      put(out, static_cast<int8_t>(q));
    }
  }
  std::vector<uint8_t> head;
  head.insert(head.end(), kMagic, kMagic + 4);
  put(head, kVersion);
  put(head, static_cast<uint16_t>(sparse() ? kSparseFlag : 0));
  put(head, static_cast<uint32_t>(dim()));
  put(head, static_cast<uint32_t>(m));
  put(head, static_cast<uint32_t>(tokens));
  std::copy(head.begin(), head.end(), out.begin());
  const uint32_t hash = payload_hash(out);
  std::memcpy(out.data() + kHashOffset, &hash, sizeof hash);
  return out;
}

namespace {

Header read_header(std::span<const uint8_t> payload, const ActivationCodec& codec) {
  require(payload.size() >= ActivationCodec::kHeaderBytes, "ActivationCodec: payload has ", payload.size(),
          " bytes, shorter than its ", ActivationCodec::kHeaderBytes, "-byte header");
  require(std::memcmp(payload.data(), kMagic, 4) == 0, "ActivationCodec: payload does not start with \"SGC1\"");
  std::size_t at = 4;
  const auto version = get<uint16_t>(payload, at, "version");
  require(version == kVersion, "ActivationCodec: payload version ", version, ", this codec reads ", kVersion);
  const auto flags = get<uint16_t>(payload, at, "flags");
  require((flags & ~kSparseFlag) == 0, "ActivationCodec: payload flags 0x", std::hex, flags, " are unknown");
  Header h;
  h.sparse = (flags & kSparseFlag) != 0;
  h.dim = get<uint32_t>(payload, at, "dim");
  h.coords = get<uint32_t>(payload, at, "coordinates");
  h.tokens = get<uint32_t>(payload, at, "tokens");
  h.hash = get<uint32_t>(payload, at, "hash");
  require(h.dim == codec.dim() && h.coords == codec.coordinates() && h.sparse == codec.sparse(),
          "ActivationCodec: payload header says dim ", h.dim, ", ", h.coords, " coordinates, ",
          h.sparse ? "sparse" : "dense", "; this codec is dim ", codec.dim(), ", ", codec.coordinates(),
          " coordinates, ", codec.sparse() ? "sparse" : "dense");
  require(payload_hash(payload) == h.hash, "ActivationCodec: payload does not match its hash (corrupted)");
  // Every token takes at least its scale (and a count when sparse): a bound before any allocation.
  const std::size_t min_token = h.sparse ? 6 : 4 + static_cast<std::size_t>(h.coords);
  require(static_cast<std::size_t>(h.tokens) <= (payload.size() - ActivationCodec::kHeaderBytes) / min_token,
          "ActivationCodec: payload of ", payload.size(), " bytes cannot hold the ", h.tokens, " tokens it declares");
  return h;
}

}  // namespace

int64_t ActivationCodec::tokens_in(std::span<const uint8_t> payload) const { return read_header(payload, *this).tokens; }

RowMatrix<float> ActivationCodec::decode(std::span<const uint8_t> payload) const {
  const Header h = read_header(payload, *this);
  const int64_t m = coordinates();
  const bool narrow = m <= 256;
  if (!h.sparse)
    require(payload.size() == kHeaderBytes + static_cast<std::size_t>(h.tokens) * (4 + static_cast<std::size_t>(m)),
            "ActivationCodec: payload has ", payload.size(), " bytes, ", h.tokens, " dense tokens need ",
            kHeaderBytes + static_cast<std::size_t>(h.tokens) * (4 + static_cast<std::size_t>(m)));
  RowMatrix<float> c = RowMatrix<float>::Zero(h.tokens, m);
  std::size_t at = kHeaderBytes;
  std::vector<int> idx;
  for (int64_t t = 0; t < h.tokens; ++t) {
    const auto scale = get<float>(payload, at, "a token's scale");
    require(std::isfinite(scale) && scale >= 0, "ActivationCodec: payload token ", t, " has scale ", scale);
    if (h.sparse) {
      const auto count = get<uint16_t>(payload, at, "a token's count");
      require(count <= m, "ActivationCodec: payload token ", t, " keeps ", count, " of ", m, " coordinates");
      idx.resize(count);
      for (auto& j : idx) {
        j = narrow ? get<uint8_t>(payload, at, "an index") : get<uint16_t>(payload, at, "an index");
        require(j < m, "ActivationCodec: payload token ", t, " has index ", j, " outside [0, ", m, ")");
      }
    } else {
      idx.resize(static_cast<std::size_t>(m));
      std::iota(idx.begin(), idx.end(), 0);
    }
    for (int j : idx) c(t, j) = scale * static_cast<float>(get<int8_t>(payload, at, "a value"));
  }
  require(at == payload.size(), "ActivationCodec: payload has ", payload.size() - at, " bytes after its last token");
  return reconstruct(c);
}

}  // namespace strata::gated
