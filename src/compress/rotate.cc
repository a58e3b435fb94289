#include "strata/compress/rotate.hpp"

#include <cmath>
#include <cstring>
#include <map>
#include <random>
#include <set>

#include <Eigen/QR>

#include "strata/core/error.hpp"
#include "strata/io/gguf.hpp"

namespace strata::compress {

namespace {

bool is_prime(int64_t q) {
  if (q < 2) return false;
  for (int64_t d = 2; d * d <= q; ++d)
    if (q % d == 0) return false;
  return true;
}
bool is_power_of_two(int64_t n) { return n >= 1 && (n & (n - 1)) == 0; }
// Paley's first construction gives order q + 1 for a prime q = 3 mod 4.
bool is_paley_order(int64_t n) { return n >= 4 && (n - 1) % 4 == 3 && is_prime(n - 1); }

// Sylvester: H_1 = [1], H_2m = [[H, H], [H, -H]].
Matrix<double> sylvester(int64_t n) {
  Matrix<double> h = Matrix<double>::Ones(1, 1);
  while (h.rows() < n) {
    const int64_t m = h.rows();
    Matrix<double> g(2 * m, 2 * m);
    g << h, h, h, -h;
    h = std::move(g);
  }
  return h;
}

// Paley I for prime q = 3 mod 4: with the Jacobsthal matrix Qm[i][j] = chi(j - i) (chi the quadratic
// character of GF(q)), S = [[0, 1^T], [-1, Qm]] is skew-symmetric with S S^T = q I, and H = I + S.
Matrix<double> paley(int64_t n) {
  const int64_t q = n - 1;
  std::vector<int> chi(static_cast<size_t>(q), -1);
  chi[0] = 0;
  for (int64_t x = 1; x < q; ++x) chi[static_cast<size_t>(x * x % q)] = 1;
  Matrix<double> h = Matrix<double>::Identity(n, n);
  for (int64_t j = 1; j < n; ++j) {
    h(0, j) += 1;
    h(j, 0) -= 1;
  }
  for (int64_t i = 0; i < q; ++i)
    for (int64_t j = 0; j < q; ++j) h(i + 1, j + 1) += chi[static_cast<size_t>(((j - i) % q + q) % q)];
  return h;
}

Matrix<double> kronecker(const Matrix<double>& a, const Matrix<double>& b) {
  Matrix<double> k(a.rows() * b.rows(), a.cols() * b.cols());
  for (int64_t i = 0; i < a.rows(); ++i)
    for (int64_t j = 0; j < a.cols(); ++j) k.block(i * b.rows(), j * b.cols(), b.rows(), b.cols()) = a(i, j) * b;
  return k;
}

bool orders_of(int64_t n, std::vector<int64_t>& out) {
  if (n == 1) return true;
  if (is_power_of_two(n)) {
    out.push_back(n);
    return true;
  }
  for (int64_t d = n; d >= 4; --d) {
    if (n % d != 0 || !is_paley_order(d)) continue;
    out.push_back(d);
    if (orders_of(n / d, out)) return true;
    out.pop_back();
  }
  return false;
}

// In-memory float32 tensors with another model's config and metadata.
class MemoryModel final : public io::Model {
 public:
  MemoryModel(const io::Model& like, io::FileFormat format) : format_(format) {
    path_ = like.path();
    config_ = like.config();
    config_.tied_embeddings = false;
    metadata_ = like.metadata();
  }
  void add(std::string name, RowMatrix<float> m, bool vector) {
    io::TensorInfo t;
    t.name = std::move(name);
    t.shape = vector ? Shape{m.size()} : Shape{m.rows(), m.cols()};
    t.type = "F32";
    t.nbytes = static_cast<uint64_t>(m.size()) * sizeof(float);
    tensors_.push_back(std::move(t));
    data_.push_back(std::move(m));
  }
  io::FileFormat format() const override { return format_; }
  std::span<const std::byte> raw(const io::TensorInfo& t) const override {
    const RowMatrix<float>& m = data_[index(t)];
    return {reinterpret_cast<const std::byte*>(m.data()), static_cast<size_t>(m.size()) * sizeof(float)};
  }
  Tensor to_f32(const io::TensorInfo& t) const override {
    const RowMatrix<float>& m = data_[index(t)];
    Tensor out(DType::f32, t.shape);
    std::memcpy(out.raw(), m.data(), out.nbytes());
    return out;
  }

 private:
  size_t index(const io::TensorInfo& t) const {
    for (size_t i = 0; i < tensors_.size(); ++i)
      if (tensors_[i].name == t.name) return i;
    fail("rotated model: no tensor '", t.name, "'");
  }
  io::FileFormat format_;
  std::vector<RowMatrix<float>> data_;
};

RowMatrix<float> matrix_of(const io::Model& file, const std::string& name) {
  const Tensor t = file.to_f32(name);
  const int64_t rows = t.rank() == 2 ? t.dim(0) : 1, cols = t.rank() == 2 ? t.dim(1) : t.numel();
  RowMatrix<float> m(rows, cols);
  std::memcpy(m.data(), t.raw(), static_cast<size_t>(m.size()) * sizeof(float));
  return m;
}

const char* const kReads[] = {"attn_q", "attn_k", "attn_v", "ffn_gate", "ffn_up"};  // read the normalized state
const char* const kWrites[] = {"attn_output", "ffn_down"};                          // write the residual

}  // namespace

RotationKind parse_rotation_kind(std::string_view name) {
  if (name == "hadamard") return RotationKind::hadamard;
  if (name == "random") return RotationKind::random;
  fail("rotation '", name, "': known kinds are hadamard and random");
}

std::string_view rotation_kind_name(RotationKind kind) {
  return kind == RotationKind::hadamard ? "hadamard" : "random";
}

std::vector<int64_t> hadamard_orders(int64_t n) {
  if (n == 1) return {1};
  std::vector<int64_t> out;
  if (n < 1 || !orders_of(n, out)) return {};
  return out;
}

Matrix<double> hadamard_matrix(int64_t n) {
  const std::vector<int64_t> orders = hadamard_orders(n);
  require(!orders.empty(), "no Hadamard matrix of order ", n,
          " from Sylvester and Paley I blocks (use the random orthogonal rotation)");
  Matrix<double> h = Matrix<double>::Ones(1, 1);
  for (int64_t o : orders) h = kronecker(h, is_power_of_two(o) ? sylvester(o) : paley(o));
  return h;
}

Matrix<double> rotation_matrix(int64_t n, RotationKind kind, uint64_t seed) {
  require(n >= 1, "rotation_matrix: order ", n);
  std::mt19937_64 rng(seed);
  if (kind == RotationKind::hadamard) {
    Matrix<double> q = hadamard_matrix(n) / std::sqrt(static_cast<double>(n));
    std::bernoulli_distribution coin(0.5);
    for (int64_t i = 0; i < n; ++i)
      if (coin(rng)) q.row(i) *= -1.0;
    return q;
  }
  std::normal_distribution<double> gauss(0.0, 1.0);
  Matrix<double> g(n, n);
  for (int64_t i = 0; i < g.size(); ++i) g.data()[i] = gauss(rng);
  Eigen::HouseholderQR<Matrix<double>> qr(g);
  Matrix<double> q = qr.householderQ();
  const Matrix<double> r = qr.matrixQR().triangularView<Eigen::Upper>();
  for (int64_t j = 0; j < n; ++j)
    if (r(j, j) < 0) q.col(j) *= -1.0;
  return q;
}

void check_rotatable(const io::Model& file, const RotateOptions& options) {
  const io::ModelConfig& c = file.config();
  const std::string where = file.path().string();
  require(c.architecture == "llama", where, ": rotation needs a Llama-family decoder; architecture '",
          c.architecture, "' is not supported");
  require(c.dim > 0 && c.n_layers > 0, where, ": missing hyper-parameters (dim ", c.dim, ", layers ", c.n_layers, ")");
  std::set<std::string> known{"token_embd.weight", "output_norm.weight", "output.weight"};
  for (int64_t l = 0; l < c.n_layers; ++l) {
    const std::string p = "blk." + std::to_string(l) + ".";
    for (const char* n : {"attn_norm", "ffn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up",
                          "ffn_down"})
      known.insert(p + n + ".weight");
  }
  for (const auto& t : file.tensors())
    require(known.count(t.name) != 0, where, ": tensor '", t.name,
            "' is not one the residual rotation knows how to transform");
  for (const auto& n : known)
    require(n == "output.weight" || file.find(n) != nullptr, where, ": tensor '", n, "' is missing");
  if (options.rotate && options.kind == RotationKind::hadamard)
    require(!hadamard_orders(c.dim).empty(), where, ": hidden size ", c.dim,
            " has no Hadamard matrix from Sylvester and Paley I blocks; use the random rotation");
}

std::unique_ptr<io::Model> rotate_model(const io::Model& file, const RotateOptions& options) {
  check_rotatable(file, options);
  const io::ModelConfig& c = file.config();
  const int64_t dim = c.dim;
  RowMatrix<float> q;  // [dim, dim]
  if (options.rotate) q = rotation_matrix(dim, options.kind, options.seed).cast<float>();
  auto check_shape = [&](const std::string& name, const RowMatrix<float>& m, bool cols_are_dim) {
    require((cols_are_dim ? m.cols() : m.rows()) == dim, file.path().string(), ": tensor '", name, "' is [", m.rows(),
            ", ", m.cols(), "], expected ", cols_are_dim ? "columns" : "rows", " of ", dim);
  };
  auto norm_of = [&](const std::string& name) {
    RowMatrix<float> g = matrix_of(file, name);
    require(g.size() == dim, file.path().string(), ": tensor '", name, "' has ", g.size(), " values, expected ", dim);
    return Eigen::Map<const Vector<float>>(g.data(), dim).eval();
  };
  // W [out, dim] reading the normalized state: W diag(g) Q.
  auto fold_in = [&](RowMatrix<float> w, const Vector<float>& g) {
    w = w * g.asDiagonal();
    if (options.rotate) w = (w * q).eval();
    return w;
  };
  auto out = std::make_unique<MemoryModel>(file, file.format());
  const RowMatrix<float> ones = RowMatrix<float>::Ones(1, dim);
  {
    RowMatrix<float> e = matrix_of(file, "token_embd.weight");
    check_shape("token_embd.weight", e, true);
    const Vector<float> g_out = norm_of("output_norm.weight");
    RowMatrix<float> head = file.find("output.weight") ? matrix_of(file, "output.weight") : e;
    check_shape("output.weight", head, true);
    if (options.rotate) e = (e * q).eval();
    out->add("token_embd.weight", std::move(e), false);
    out->add("output_norm.weight", ones, true);
    out->add("output.weight", fold_in(std::move(head), g_out), false);
  }
  for (int64_t l = 0; l < c.n_layers; ++l) {
    const std::string p = "blk." + std::to_string(l) + ".";
    const Vector<float> g_attn = norm_of(p + "attn_norm.weight"), g_ffn = norm_of(p + "ffn_norm.weight");
    out->add(p + "attn_norm.weight", ones, true);
    out->add(p + "ffn_norm.weight", ones, true);
    for (const char* n : kReads) {
      const std::string name = p + n + ".weight";
      RowMatrix<float> w = matrix_of(file, name);
      check_shape(name, w, true);
      out->add(name, fold_in(std::move(w), std::string_view(n).starts_with("attn") ? g_attn : g_ffn), false);
    }
    for (const char* n : kWrites) {
      const std::string name = p + n + ".weight";
      RowMatrix<float> w = matrix_of(file, name);
      check_shape(name, w, false);
      if (options.rotate) w = (q.transpose() * w).eval();
      out->add(name, std::move(w), false);
    }
  }
  return out;
}

void write_f32_gguf(const io::Model& model, const io::Model& source, const std::filesystem::path& out,
                    const std::string& note) {
  for (const auto& t : model.tensors())
    require(t.type == "F32", "write_f32_gguf: tensor '", t.name, "' is ", t.type, ", not F32");
  io::GgufWriter w;
  std::optional<io::GgufFile> src;
  if (source.format() == io::FileFormat::gguf) {
    src = io::GgufFile::open(source.path());
    w = io::GgufWriter::from(*src);
    std::vector<std::string> names;
    for (const auto& t : src->tensors()) names.push_back(t.name);
    for (const auto& n : names) w.remove_tensor(n);
    w.set("general.file_type", uint32_t{0});
  } else {
    const io::ModelConfig& c = source.config();
    w.set("general.architecture", std::string("llama"));
    if (!c.name.empty()) w.set("general.name", c.name);
    w.set("llama.block_count", static_cast<uint32_t>(c.n_layers));
    w.set("llama.embedding_length", static_cast<uint32_t>(c.dim));
    w.set("llama.feed_forward_length", static_cast<uint32_t>(c.hidden_dim));
    w.set("llama.attention.head_count", static_cast<uint32_t>(c.n_heads));
    w.set("llama.attention.head_count_kv", static_cast<uint32_t>(c.n_kv_heads > 0 ? c.n_kv_heads : c.n_heads));
    w.set("llama.context_length", static_cast<uint32_t>(c.context_length));
    w.set("llama.vocab_size", static_cast<uint32_t>(c.vocab_size));
    w.set("llama.rope.dimension_count", static_cast<uint32_t>(c.head_dim > 0 ? c.head_dim : c.dim / c.n_heads));
    if (c.rope_theta > 0) w.set("llama.rope.freq_base", static_cast<float>(c.rope_theta));
    w.set("llama.attention.layer_norm_rms_epsilon", static_cast<float>(c.norm_eps > 0 ? c.norm_eps : 1e-5));
    w.set("general.file_type", uint32_t{0});
  }
  w.set("strata.rotation", note);
  for (const auto& t : model.tensors()) {
    std::vector<int64_t> ne(t.shape.dims().rbegin(), t.shape.dims().rend());
    w.add_tensor_view(t.name, io::GgmlType::F32, std::move(ne), model.raw(t));
  }
  w.write(out);
}

}  // namespace strata::compress
