#include "strata/io/llama2c.hpp"

#include <bit>
#include <cstring>
#include <limits>
#include <string>

#include "strata/core/error.hpp"

namespace strata::io {

static_assert(std::endian::native == std::endian::little, "llama2.c checkpoints are little-endian");

namespace {

constexpr uint64_t kHeaderBytes = 7 * sizeof(int32_t);
// llama2.c's run.c hard-codes these; the checkpoint does not carry them.
constexpr double kRopeTheta = 10000.0;
constexpr double kNormEps = 1e-5;

// Sums and products of header fields in unsigned 64-bit arithmetic, remembering an overflow instead
// of wrapping, so that a forged header can never produce a small "expected size".
struct Counter {
  uint64_t value = 0;
  bool overflow = false;
  static uint64_t mul(uint64_t a, uint64_t b, bool& of) {
    if (a != 0 && b > std::numeric_limits<uint64_t>::max() / a) {
      of = true;
      return 0;
    }
    return a * b;
  }
  void add(std::initializer_list<uint64_t> factors) {
    uint64_t p = 1;
    for (uint64_t f : factors) p = mul(p, f, overflow);
    if (p > std::numeric_limits<uint64_t>::max() - value) overflow = true;
    else value += p;
  }
};

}  // namespace

Llama2cSize llama2c_expected_size(const Llama2cHeader& h) {
  Llama2cSize out;
  auto bad = [&](auto&&... parts) {
    out.problem = detail::concat(parts...);
    return out;
  };
  if (h.dim <= 0 || h.hidden_dim <= 0 || h.n_layers <= 0 || h.n_heads <= 0 || h.n_kv_heads <= 0 ||
      h.vocab_size == 0 || h.vocab_size == std::numeric_limits<int32_t>::min() || h.seq_len <= 0)
    return bad("header fields must be positive (vocab_size may be negative): dim=", h.dim,
               " hidden_dim=", h.hidden_dim, " n_layers=", h.n_layers, " n_heads=", h.n_heads,
               " n_kv_heads=", h.n_kv_heads, " vocab_size=", h.vocab_size, " seq_len=", h.seq_len);
  if (h.dim % h.n_heads != 0) return bad("n_heads=", h.n_heads, " does not divide dim=", h.dim);
  if (h.n_kv_heads > h.n_heads || h.n_heads % h.n_kv_heads != 0)
    return bad("n_kv_heads=", h.n_kv_heads, " does not divide n_heads=", h.n_heads);
  const uint64_t dim = static_cast<uint64_t>(h.dim), hidden = static_cast<uint64_t>(h.hidden_dim);
  const uint64_t layers = static_cast<uint64_t>(h.n_layers);
  const uint64_t vocab = static_cast<uint64_t>(h.vocab_size > 0 ? h.vocab_size : -static_cast<int64_t>(h.vocab_size));
  const uint64_t head_size = dim / static_cast<uint64_t>(h.n_heads);
  if (head_size % 2 != 0) return bad("head size ", head_size, " is odd; RoPE needs pairs");
  const uint64_t kv_dim = dim * static_cast<uint64_t>(h.n_kv_heads) / static_cast<uint64_t>(h.n_heads);
  Counter floats;
  floats.add({vocab, dim});                 // token embedding
  floats.add({layers, dim});                // rms_att
  floats.add({layers, dim, dim});           // wq
  floats.add({2, layers, kv_dim, dim});     // wk, wv
  floats.add({layers, dim, dim});           // wo
  floats.add({layers, dim});                // rms_ffn
  floats.add({3, layers, hidden, dim});     // w1, w2, w3
  floats.add({dim});                        // rms_final
  floats.add({2, static_cast<uint64_t>(h.seq_len), head_size / 2});  // legacy freq_cis_real, _imag
  if (!h.shared_classifier()) floats.add({vocab, dim});
  bool of = floats.overflow;
  const uint64_t bytes = Counter::mul(floats.value, sizeof(float), of);
  if (of || bytes > std::numeric_limits<uint64_t>::max() - kHeaderBytes)
    return bad("the sizes implied by the header overflow");
  out.bytes = kHeaderBytes + bytes;
  return out;
}

Llama2cLayout parse_llama2c(std::span<const std::byte> bytes, std::string_view what) {
  ByteReader in(bytes, std::string(what));
  Llama2cLayout out;
  Llama2cHeader& h = out.header;
  h.dim = in.read<int32_t>("header field dim");
  h.hidden_dim = in.read<int32_t>("header field hidden_dim");
  h.n_layers = in.read<int32_t>("header field n_layers");
  h.n_heads = in.read<int32_t>("header field n_heads");
  h.n_kv_heads = in.read<int32_t>("header field n_kv_heads");
  h.vocab_size = in.read<int32_t>("header field vocab_size");
  h.seq_len = in.read<int32_t>("header field seq_len");
  const Llama2cSize size = llama2c_expected_size(h);
  require(size.problem.empty(), what, ": not a llama2.c checkpoint: ", size.problem);
  require(size.bytes == bytes.size(), what, ": llama2.c header (dim=", h.dim, ", hidden_dim=", h.hidden_dim,
          ", n_layers=", h.n_layers, ", n_heads=", h.n_heads, ", n_kv_heads=", h.n_kv_heads, ", vocab_size=",
          h.vocab_size, ", seq_len=", h.seq_len, ") implies ", size.bytes, " bytes but the file has ", bytes.size(),
          bytes.size() < size.bytes ? " (truncated)" : " (trailing data or a different format)");

  const int64_t dim = h.dim, hidden = h.hidden_dim, heads = h.n_heads;
  const int64_t vocab = h.vocab_size > 0 ? h.vocab_size : -static_cast<int64_t>(h.vocab_size);
  const int64_t head_size = dim / heads;
  const int64_t kv_dim = dim * h.n_kv_heads / heads;

  uint64_t offset = kHeaderBytes;
  auto add = [&](std::string name, Shape shape) {
    TensorInfo t;
    t.name = std::move(name);
    t.shape = shape;
    t.type = "F32";
    t.offset = offset;
    t.nbytes = static_cast<uint64_t>(shape.numel()) * sizeof(float);
    offset += t.nbytes;
    out.tensors.push_back(std::move(t));
  };
  // One array per kind, all layers back to back: emit every layer's slice of an array before the next.
  auto per_layer = [&](const char* suffix, Shape shape) {
    for (int32_t l = 0; l < h.n_layers; ++l) add("blk." + std::to_string(l) + "." + suffix, shape);
  };
  add("token_embd.weight", {vocab, dim});
  per_layer("attn_norm.weight", {dim});
  per_layer("attn_q.weight", {dim, dim});
  per_layer("attn_k.weight", {kv_dim, dim});
  per_layer("attn_v.weight", {kv_dim, dim});
  per_layer("attn_output.weight", {dim, dim});
  per_layer("ffn_norm.weight", {dim});
  per_layer("ffn_gate.weight", {hidden, dim});  // w1
  per_layer("ffn_down.weight", {dim, hidden});  // w2
  per_layer("ffn_up.weight", {hidden, dim});    // w3
  add("output_norm.weight", {dim});
  // The legacy RoPE tables are recomputed by every engine; they are skipped, not exposed.
  offset += 2 * static_cast<uint64_t>(h.seq_len) * static_cast<uint64_t>(head_size / 2) * sizeof(float);
  if (!h.shared_classifier()) add("output.weight", {vocab, dim});
  require(offset == bytes.size(), what, ": internal layout error: tensors end at ", offset, " of ", bytes.size());

  ModelConfig& c = out.config;
  c.architecture = "llama";
  c.n_layers = h.n_layers;
  c.dim = dim;
  c.hidden_dim = hidden;
  c.n_heads = heads;
  c.n_kv_heads = h.n_kv_heads;
  c.head_dim = head_size;
  c.vocab_size = vocab;
  c.context_length = h.seq_len;
  c.rope_theta = kRopeTheta;
  c.norm_eps = kNormEps;
  c.tied_embeddings = h.shared_classifier();
  return out;
}

Llama2cModel::Llama2cModel(const std::filesystem::path& path) : file_(path) {
  path_ = path;
  auto layout = parse_llama2c(file_.bytes(), path.string());
  header_ = layout.header;
  tensors_ = std::move(layout.tensors);
  config_ = layout.config;
  config_.name = path.stem().string();
  metadata_ = {
      {"dim", header_.dim},
      {"hidden_dim", header_.hidden_dim},
      {"n_layers", header_.n_layers},
      {"n_heads", header_.n_heads},
      {"n_kv_heads", header_.n_kv_heads},
      {"vocab_size", header_.vocab_size},
      {"seq_len", header_.seq_len},
      {"shared_classifier", header_.shared_classifier()},
      {"rope_layout", "adjacent"},
      {"rope_theta", kRopeTheta},
      {"norm_eps", kNormEps},
  };
}

std::span<const std::byte> Llama2cModel::raw(const TensorInfo& t) const {
  require(t.offset <= file_.size() && t.nbytes <= file_.size() - t.offset, path_.string(), ": tensor '", t.name,
          "': bytes [", t.offset, ", ", t.offset + t.nbytes, ") lie outside the file");
  return file_.bytes().subspan(t.offset, t.nbytes);
}

Tensor Llama2cModel::to_f32(const TensorInfo& t) const {
  require(t.type == "F32", path_.string(), ": tensor '", t.name, "': type ", t.type, " is not float32");
  const auto bytes = raw(t);
  Tensor out(DType::f32, t.shape);
  // The data is only 4-byte aligned in the file (28-byte header), so copy rather than alias.
  if (!bytes.empty()) std::memcpy(out.raw(), bytes.data(), bytes.size());
  return out;
}

std::unique_ptr<Model> open_llama2c(const std::filesystem::path& path) {
  return std::make_unique<Llama2cModel>(path);
}

}  // namespace strata::io
