// Compressed model files: GGUF with ggml blocks (byte layout, metadata, size prediction, exact
// reload), strata safetensors with every compressed form (exact reload, tokenizer and config kept),
// and the failures (wrong layers, unwritable paths, corrupted metadata) leaving nothing behind.
#include "strata/compress/model_io.hpp"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <functional>
#include <initializer_list>

#include "strata/compress/ggml/quantize.hpp"
#include "strata/io/safetensors.hpp"
#include "strata/kernels/ggml_dequant.hpp"
#include "strata/nn/calibration.hpp"
#include "strata/nn/eval.hpp"
#include "strata/nn/tokenizer.hpp"
#include "test_util.hpp"

namespace strata::compress {
namespace {

using kernels::GgmlType;

std::filesystem::path stories_path() {
  return strata::testing::shared_data_dir() / "models/stories260K/stories260K.bin";
}
std::filesystem::path smollm_path() { return strata::testing::models_dir() / "smollm2-135m-instruct-q4_1.gguf"; }

// A scratch directory removed at the end of the test.
class TempDir {
 public:
  TempDir() {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    path_ = std::filesystem::temp_directory_path() /
            ("strata_model_io_" + std::to_string(::getpid()) + "_" + info->test_suite_name() + "_" + info->name());
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::filesystem::path& path() const { return path_; }
  // Names of the files in the directory, sorted.
  std::vector<std::string> files() const {
    std::vector<std::string> out;
    for (const auto& e : std::filesystem::directory_iterator(path_)) out.push_back(e.path().filename().string());
    std::sort(out.begin(), out.end());
    return out;
  }

 private:
  std::filesystem::path path_;
};

RowMatrix<float> weight_of(const io::Model& file, const std::string& name) {
  const Tensor t = file.to_f32(name);
  RowMatrix<float> w(t.dim(0), t.dim(1));
  std::memcpy(w.data(), t.raw(), t.nbytes());
  return w;
}

Compressed compress(const io::Model& file, const std::string& name, const std::string& method, const std::string& knob,
                    const LayerCalibration& calib = {}) {
  const RowMatrix<float> w = weight_of(file, name);
  return find_compressor(method).apply(Layer{name, &w}, calib, knob);
}

// The model as the engine would run it with `layers` swapped in, built without any file.
nn::LlamaModel with_layers(const nn::LlamaModel& base, const LayerMap& layers, bool tied) {
  nn::LlamaModel m = base.clone();
  for (const auto& [name, c] : layers) {
    const WeightCompressor& comp = find_compressor(c.method);
    if (name == "token_embd.weight") {
      auto embedding = comp.to_embedding(c);
      if (tied) m.set_linear("output.weight", embedding->as_linear());
      m.set_token_embedding(std::move(embedding));
    } else {
      m.set_linear(name, comp.to_linear(c));
    }
  }
  return m;
}

std::vector<float> logits(const nn::LlamaModel& m, const std::vector<int32_t>& tokens) {
  nn::LlamaSession s(m, static_cast<int64_t>(tokens.size()));
  std::vector<float> out(tokens.size() * static_cast<size_t>(m.config().vocab_size));
  s.forward(tokens, out.data(), nn::Logits::all);
  return out;
}

// Positions where two logit arrays differ in any bit (0 for an exact reload).
size_t mismatches(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return std::max(a.size(), b.size());
  size_t n = 0;
  for (size_t i = 0; i < a.size(); ++i) n += std::memcmp(&a[i], &b[i], sizeof(float)) != 0;
  return n;
}

bool same_bytes(std::span<const std::byte> a, std::span<const std::byte> b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size()) == 0);
}

// Runs f, which must throw strata::Error with every one of `parts` in its message.
void expect_error(const std::function<void()>& f, std::initializer_list<std::string_view> parts) {
  try {
    f();
  } catch (const Error& e) {
    const std::string msg = e.what();
    for (auto p : parts) EXPECT_NE(msg.find(p), std::string::npos) << "'" << p << "' not in: " << msg;
    return;
  }
  ADD_FAILURE() << "no strata::Error thrown";
}

void expect_same_config(const io::ModelConfig& a, const io::ModelConfig& b) {
  EXPECT_EQ(a.architecture, b.architecture);
  EXPECT_EQ(a.name, b.name);
  EXPECT_EQ(a.n_layers, b.n_layers);
  EXPECT_EQ(a.dim, b.dim);
  EXPECT_EQ(a.hidden_dim, b.hidden_dim);
  EXPECT_EQ(a.n_heads, b.n_heads);
  EXPECT_EQ(a.n_kv_heads, b.n_kv_heads);
  EXPECT_EQ(a.head_dim, b.head_dim);
  EXPECT_EQ(a.vocab_size, b.vocab_size);
  EXPECT_EQ(a.context_length, b.context_length);
  EXPECT_EQ(a.rope_theta, b.rope_theta);
  EXPECT_EQ(a.norm_eps, b.norm_eps);
  EXPECT_EQ(a.tied_embeddings, b.tied_embeddings);
}

// Checks a GGUF written by write_gguf against its source: tensor order, shapes, types, bytes and
// offsets; every source key in order with its value (`changed` keys may hold other values); the
// file type, the quantization version and `extra` appended; and the predicted size.
void check_written_gguf(const io::GgufFile& src, const LayerMap& layers, const std::filesystem::path& out,
                        const GgufWriteInfo& info, const std::map<std::string, GgmlType>& want_types,
                        const std::vector<std::pair<std::string, std::string>>& extra) {
  const io::GgufFile got = io::GgufFile::open(out);
  EXPECT_EQ(got.version(), src.version());
  EXPECT_EQ(got.alignment(), src.alignment());
  EXPECT_EQ(got.data_offset() % got.alignment(), 0u);
  ASSERT_EQ(got.tensors().size(), src.tensors().size());
  std::map<GgmlType, uint64_t> weights;
  uint64_t tensor_bytes = 0;
  for (size_t i = 0; i < src.tensors().size(); ++i) {
    const auto& s = src.tensors()[i];
    const auto& g = got.tensors()[i];
    SCOPED_TRACE(s.name);
    EXPECT_EQ(g.name, s.name);
    EXPECT_EQ(g.ne, s.ne);
    EXPECT_EQ(g.offset % got.alignment(), 0u) << "offset " << g.offset;
    weights[g.type] += static_cast<uint64_t>(g.numel());
    tensor_bytes += g.nbytes;
    if (auto it = layers.find(s.name); it != layers.end()) {
      EXPECT_EQ(g.type, want_types.at(s.name));
      const auto data = ggml::gguf_tensor_data(it->second);
      EXPECT_EQ(g.type, data.type);
      EXPECT_TRUE(same_bytes(got.data(g), data.bytes));
    } else {
      EXPECT_EQ(g.type, s.type);
      EXPECT_TRUE(same_bytes(got.data(g), src.data(s)));
    }
  }

  // Every source key, in order and with its value, then the appended ones.
  const auto& sk = src.metadata();
  const auto& gk = got.metadata();
  size_t appended = 0;
  for (const char* key : {"general.file_type", "general.quantization_version"}) appended += src.find(key) == nullptr;
  ASSERT_EQ(gk.size(), sk.size() + appended + extra.size());
  for (size_t i = 0; i < sk.size(); ++i) {
    EXPECT_EQ(gk[i].key, sk[i].key);
    if (sk[i].key != "general.file_type") {
      EXPECT_TRUE(gk[i].value == sk[i].value) << sk[i].key;
    }
  }
  for (size_t i = 0; i < extra.size(); ++i) {
    EXPECT_EQ(gk[sk.size() + appended + i].key, extra[i].first);
    EXPECT_EQ(got.get_string(extra[i].first), extra[i].second);
  }
  const auto most = std::max_element(weights.begin(), weights.end(),
                                     [](const auto& a, const auto& b) { return a.second < b.second; });
  EXPECT_EQ(info.file_type, llama_file_type(most->first));
  ASSERT_TRUE(std::holds_alternative<uint32_t>(got.get("general.file_type")));
  EXPECT_EQ(got.get_int("general.file_type"), info.file_type);
  ASSERT_TRUE(std::holds_alternative<uint32_t>(got.get("general.quantization_version")));
  EXPECT_EQ(got.get_int("general.quantization_version"), 2);

  EXPECT_EQ(info.file_bytes, std::filesystem::file_size(out));
  EXPECT_EQ(info.tensor_bytes, tensor_bytes);
  EXPECT_EQ(info.file_bytes, info.tensor_bytes + info.overhead_bytes);
  EXPECT_EQ(gguf_overhead_bytes(src, layers, extra), info.overhead_bytes);
}

TEST(LlamaFileType, FollowsLlamaCppNumbering) {
  EXPECT_EQ(llama_file_type(GgmlType::F32), 0);
  EXPECT_EQ(llama_file_type(GgmlType::F16), 1);
  EXPECT_EQ(llama_file_type(GgmlType::Q4_0), 2);
  EXPECT_EQ(llama_file_type(GgmlType::Q4_1), 3);
  EXPECT_EQ(llama_file_type(GgmlType::Q8_0), 7);
  EXPECT_EQ(llama_file_type(GgmlType::Q5_0), 8);
  EXPECT_EQ(llama_file_type(GgmlType::Q5_1), 9);
  EXPECT_EQ(llama_file_type(GgmlType::Q2_K), 10);
  EXPECT_EQ(llama_file_type(GgmlType::Q3_K), 12);
  EXPECT_EQ(llama_file_type(GgmlType::Q4_K), 15);
  EXPECT_EQ(llama_file_type(GgmlType::Q5_K), 17);
  EXPECT_EQ(llama_file_type(GgmlType::Q6_K), 18);
  EXPECT_EQ(llama_file_type(GgmlType::IQ4_NL), 25);
  EXPECT_EQ(llama_file_type(GgmlType::BF16), 32);
  EXPECT_EQ(llama_file_type(GgmlType::Q8_K), 0);  // not a file type in llama.cpp either
}

// ---- stories260K ------------------------------------------------------------------------------------

class Stories : public ::testing::Test {
 protected:
  void SetUp() override {
    STRATA_REQUIRE_FILE(stories_path(), "shared data: ../shared/data/models/stories260K");
    file_ = io::open_model(stories_path());
    base_ = std::make_unique<nn::LlamaModel>(nn::LlamaModel::load(*file_));
    tokens_ = nn::sample_sequences(*base_, 1, 40, 1, 11)[0];
  }

  // stories260K as a GGUF with float32 tensors and a non-default alignment, so that the GGUF paths
  // run in milliseconds.
  std::filesystem::path write_stories_gguf() const {
    const auto& c = file_->config();
    io::GgufWriter w;
    w.set("general.architecture", std::string("llama"));
    w.set("general.name", std::string("stories260K"));
    w.set("general.alignment", uint32_t{64});
    w.set("llama.block_count", static_cast<uint32_t>(c.n_layers));
    w.set("llama.context_length", static_cast<uint32_t>(c.context_length));
    w.set("llama.embedding_length", static_cast<uint32_t>(c.dim));
    w.set("llama.feed_forward_length", static_cast<uint32_t>(c.hidden_dim));
    w.set("llama.attention.head_count", static_cast<uint32_t>(c.n_heads));
    w.set("llama.attention.head_count_kv", static_cast<uint32_t>(c.n_kv_heads));
    w.set("llama.rope.freq_base", static_cast<float>(c.rope_theta));
    w.set("llama.attention.layer_norm_rms_epsilon", static_cast<float>(c.norm_eps));
    for (const auto& t : file_->tensors()) {
      std::vector<int64_t> ne(t.shape.dims().rbegin(), t.shape.dims().rend());
      const auto bytes = file_->raw(t);
      w.add_tensor(t.name, GgmlType::F32, ne, std::vector<std::byte>(bytes.begin(), bytes.end()));
    }
    const auto path = dir_.path() / "stories260K.gguf";
    w.write(path);
    return path;
  }

  // Calibration statistics of every linear input over a few sequences the model samples itself.
  const nn::Calibration& calibration() {
    if (!calib_) {
      calib_ = std::make_unique<nn::Calibration>();
      const auto seqs = nn::sample_sequences(*base_, 4, 64, 1, 5);
      size_t next = 0;
      nn::calibrate(*base_, [&](std::vector<int32_t>& s) {
        if (next == seqs.size()) return false;
        s = seqs[next++];
        return true;
      }, *calib_);
    }
    return *calib_;
  }

  Compressed calibrated(const std::string& name, const std::string& method, const std::string& knob) {
    const auto& st = calibration().stats(name);
    const Matrix<double> h = st.hessian();
    const Vector<double> ms = st.mean_sq(), ma = st.mean_abs();
    return compress(*file_, name, method, knob, LayerCalibration{&h, &ms, &ma, st.tokens});
  }

  TempDir dir_;
  std::unique_ptr<io::Model> file_;
  std::unique_ptr<nn::LlamaModel> base_;
  std::unique_ptr<nn::Calibration> calib_;
  std::vector<int32_t> tokens_;
};

TEST_F(Stories, GgufMixWrittenExactlyAndReloadsToSameLogits) {
  const auto gguf = write_stories_gguf();
  const io::GgufFile src = io::GgufFile::open(gguf);
  const auto src_model = io::open_gguf(gguf);
  const nn::LlamaModel base = nn::LlamaModel::load(*src_model);
  ASSERT_EQ(mismatches(logits(base, tokens_), logits(*base_, tokens_)), 0u);

  // Every 64-column layer to q4_0 and the (tied) embedding to q8_0; ffn_down's 172 columns are no
  // whole number of blocks and stay float32. q4_0 then holds most weights: file type 2.
  LayerMap layers;
  std::map<std::string, GgmlType> types;
  for (int l = 0; l < 5; ++l)
    for (const char* slot : {"attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up"}) {
      const std::string name = "blk." + std::to_string(l) + "." + slot + ".weight";
      layers.emplace(name, compress(*src_model, name, "quant.ggml", "q4_0"));
      types[name] = GgmlType::Q4_0;
    }
  layers.emplace("token_embd.weight", compress(*src_model, "token_embd.weight", "quant.ggml_noimatrix", "q8_0"));
  types["token_embd.weight"] = GgmlType::Q8_0;
  const std::vector<std::pair<std::string, std::string>> extra = {{"strata.plan", "every 64-column layer q4_0"}};

  const auto out = dir_.path() / "mix.gguf";
  const GgufWriteInfo info = write_gguf(src, layers, out, extra);
  EXPECT_EQ(info.file_type, 2);
  check_written_gguf(src, layers, out, info, types, extra);
  RecordProperty("stories_gguf_bytes", std::to_string(info.file_bytes));
  RecordProperty("stories_gguf_overhead", std::to_string(info.overhead_bytes));

  const LoadedModel loaded = load_llama(out);
  EXPECT_TRUE(loaded.layers.empty());
  EXPECT_FALSE(is_strata_safetensors(*loaded.file));
  const nn::LlamaModel expected = with_layers(base, layers, true);
  const auto want = logits(expected, tokens_);
  EXPECT_EQ(mismatches(logits(loaded.model, tokens_), want), 0u);
  // The compression changed the model: the comparison above can fail.
  EXPECT_GT(mismatches(logits(base, tokens_), want), want.size() / 2);
}

TEST_F(Stories, GgufFailuresLeaveNoFile) {
  const auto gguf = write_stories_gguf();
  const io::GgufFile src = io::GgufFile::open(gguf);
  const auto src_model = io::open_gguf(gguf);
  const auto out = dir_.path() / "out.gguf";
  const auto before = dir_.files();
  auto nothing_written = [&] {
    EXPECT_FALSE(std::filesystem::exists(out));
    EXPECT_EQ(dir_.files(), before) << "a temporary file was left behind";
  };

  LayerMap lowrank;
  lowrank.emplace("blk.0.attn_q.weight", compress(*src_model, "blk.0.attn_q.weight", "lowrank.svd", "keep=0.5"));
  expect_error([&] { write_gguf(src, lowrank, out); }, {"blk.0.attn_q.weight", "lowrank.svd", "quant.ggml"});
  expect_error([&] { gguf_overhead_bytes(src, lowrank); }, {"blk.0.attn_q.weight", "lowrank.svd"});
  nothing_written();

  // attn_k is [32, 64]; attn_q is [64, 64].
  LayerMap wrong_shape;
  wrong_shape.emplace("blk.0.attn_q.weight", compress(*src_model, "blk.0.attn_k.weight", "quant.ggml", "q4_0"));
  expect_error([&] { write_gguf(src, wrong_shape, out); }, {"blk.0.attn_q.weight", "[32, 64]", "[64, 64]"});
  nothing_written();

  LayerMap unknown;
  unknown.emplace("blk.7.attn_q.weight", compress(*src_model, "blk.0.attn_q.weight", "quant.ggml", "q4_0"));
  expect_error([&] { write_gguf(src, unknown, out); }, {"blk.7.attn_q.weight"});
  nothing_written();

  LayerMap good;
  good.emplace("blk.0.attn_q.weight", compress(*src_model, "blk.0.attn_q.weight", "quant.ggml", "q4_0"));
  expect_error([&] { write_gguf(src, good, out, {{"general.file_type", "7"}}); }, {"general.file_type"});
  expect_error([&] { write_gguf(src, good, out, {{"a.b", "1"}, {"a.b", "2"}}); }, {"a.b", "twice"});
  nothing_written();

  // Unwritable destinations: a missing folder, and a "folder" that is a file.
  EXPECT_THROW(write_gguf(src, good, dir_.path() / "missing" / "out.gguf"), Error);
  EXPECT_THROW(write_gguf(src, good, gguf / "out.gguf"), Error);
  nothing_written();

  // A file already at the destination survives a failed write untouched.
  { std::ofstream(out) << "previous"; }
  EXPECT_THROW(write_gguf(src, lowrank, out), Error);
  std::ifstream in(out);
  std::string content((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(content, "previous");
}

TEST_F(Stories, SafetensorsEveryFormReloadsToSameLogits) {
  LayerMap layers;
  layers.emplace("blk.0.attn_q.weight", calibrated("blk.0.attn_q.weight", "lowrank.svdllm", "keep=0.5"));
  layers.emplace("blk.1.ffn_gate.weight", calibrated("blk.1.ffn_gate.weight", "prune.sparsegpt", "pattern=2:4"));
  layers.emplace("blk.2.ffn_down.weight", calibrated("blk.2.ffn_down.weight", "quant.gptq", "bits=3,group=32"));
  layers.emplace("blk.3.attn_v.weight", calibrated("blk.3.attn_v.weight", "quant.awq", "bits=4,group=32"));
  layers.emplace("blk.4.ffn_up.weight", calibrated("blk.4.ffn_up.weight", "prune.wanda", "sparsity=0.5"));
  layers.emplace("token_embd.weight", compress(*file_, "token_embd.weight", "quant.ggml", "q8_0"));

  const auto out = dir_.path() / "stories.strata.safetensors";
  const nlohmann::json extra = {{"strata.plan", {{"budget", 0.5}}}, {"note", "test"}};
  write_strata_safetensors(*file_, layers, out, extra);
  RecordProperty("stories_safetensors_bytes", std::to_string(std::filesystem::file_size(out)));

  const LoadedModel loaded = load_llama(out);
  ASSERT_TRUE(is_strata_safetensors(*loaded.file));
  EXPECT_FALSE(is_strata_safetensors(*file_));
  expect_same_config(loaded.file->config(), file_->config());
  // The source's metadata is exposed as if this were the source; __metadata__ keeps this file's own.
  EXPECT_EQ(loaded.file->metadata().at("n_kv_heads"), file_->metadata().at("n_kv_heads"));
  const auto& own = loaded.file->metadata().at("__metadata__");
  EXPECT_EQ(own.at("strata.format"), "1");
  EXPECT_EQ(own.at("strata.plan"), "{\"budget\":0.5}");
  EXPECT_EQ(own.at("note"), "test");
  EXPECT_NE(loaded.file->find("blk.0.attn_q.weight#a"), nullptr);
  EXPECT_EQ(loaded.file->find("blk.0.attn_q.weight"), nullptr);
  EXPECT_NE(loaded.file->find("blk.0.attn_k.weight"), nullptr);

  ASSERT_EQ(loaded.layers.size(), layers.size());
  for (const auto& [name, c] : layers) {
    SCOPED_TRACE(name);
    ASSERT_TRUE(loaded.layers.count(name));
    const Compressed& d = loaded.layers.at(name);
    EXPECT_EQ(d.method, c.method);
    EXPECT_EQ(d.knob, c.knob);
    EXPECT_EQ(d.rows, c.rows);
    EXPECT_EQ(d.cols, c.cols);
    EXPECT_EQ(d.meta, c.meta);
    ASSERT_EQ(d.tensors.size(), c.tensors.size());
    for (const auto& [part, t] : c.tensors) {
      const Tensor& u = d.tensors.at(part);
      EXPECT_EQ(u.dtype(), t.dtype()) << part;
      EXPECT_EQ(u.shape(), t.shape()) << part;
      EXPECT_TRUE(same_bytes({u.raw(), u.nbytes()}, {t.raw(), t.nbytes()})) << part;
    }
  }

  const auto want = logits(with_layers(*base_, layers, true), tokens_);
  EXPECT_EQ(mismatches(logits(loaded.model, tokens_), want), 0u);
  EXPECT_GT(mismatches(logits(*base_, tokens_), want), want.size() / 2);
  // The low-rank layer stays factored in the engine.
  EXPECT_EQ(loaded.model.linear("blk.0.attn_q.weight").describe(),
            find_compressor("lowrank.svdllm").to_linear(layers.at("blk.0.attn_q.weight"))->describe());
}

TEST_F(Stories, SafetensorsWriterRejectsBadInput) {
  const auto out = dir_.path() / "bad.safetensors";
  const auto before = dir_.files();
  LayerMap unknown;
  unknown.emplace("blk.9.attn_q.weight", compress(*file_, "blk.0.attn_q.weight", "lowrank.svd", "keep=0.5"));
  expect_error([&] { write_strata_safetensors(*file_, unknown, out); }, {"blk.9.attn_q.weight"});
  LayerMap wrong_shape;
  wrong_shape.emplace("blk.0.attn_q.weight", compress(*file_, "blk.0.attn_k.weight", "lowrank.svd", "keep=0.5"));
  expect_error([&] { write_strata_safetensors(*file_, wrong_shape, out); }, {"blk.0.attn_q.weight", "[32, 64]"});
  expect_error([&] { write_strata_safetensors(*file_, {}, out, nlohmann::json::array()); }, {"object"});
  expect_error([&] { write_strata_safetensors(*file_, {}, out, {{"strata.layers", "{}"}}); }, {"strata.layers"});
  EXPECT_THROW(write_strata_safetensors(*file_, {}, dir_.path() / "missing" / "x.safetensors"), Error);
  EXPECT_FALSE(std::filesystem::exists(out));
  EXPECT_EQ(dir_.files(), before);

  // A strata file is not a source: its parts would lose their layers.
  const auto first = dir_.path() / "first.safetensors";
  write_strata_safetensors(*file_, {}, first);
  const auto strata_file = io::open_model(first);
  expect_error([&] { write_strata_safetensors(*strata_file, {}, out); }, {"first.safetensors", "already"});
  EXPECT_FALSE(std::filesystem::exists(out));
}

TEST_F(Stories, CorruptedStrataMetadataFailsClearly) {
  LayerMap layers;
  layers.emplace("blk.0.attn_q.weight", compress(*file_, "blk.0.attn_q.weight", "lowrank.svd", "keep=0.5"));
  const auto good = dir_.path() / "good.safetensors";
  write_strata_safetensors(*file_, layers, good);
  const io::SafetensorsModel st(good);

  // Rewrites the file with its metadata and tensor list edited.
  int n = 0;
  auto variant = [&](const std::function<void(io::StringPairs&)>& edit_meta,
                     const std::function<void(std::vector<io::SafetensorsEntry>&)>& edit_tensors = nullptr) {
    io::StringPairs meta = st.file_metadata();
    edit_meta(meta);
    std::vector<io::SafetensorsEntry> entries;
    for (const auto& t : st.tensors()) entries.push_back({t.name, t.type, t.shape, st.raw(t)});
    if (edit_tensors) edit_tensors(entries);
    const auto path = dir_.path() / ("corrupt" + std::to_string(n++) + ".safetensors");
    io::write_safetensors(path, entries, &meta, io::TensorOrder::as_given);
    return path;
  };
  auto set = [](std::string key, std::string value) {
    return [key, value](io::StringPairs& meta) {
      for (auto& [k, v] : meta)
        if (k == key) v = value;
    };
  };
  auto edit_layer = [&](const std::function<void(nlohmann::json&)>& f) {
    for (const auto& [k, v] : st.file_metadata())
      if (k == "strata.layers") {
        auto j = nlohmann::json::parse(v);
        f(j["blk.0.attn_q.weight"]);
        return set("strata.layers", j.dump());
      }
    ADD_FAILURE() << "no strata.layers";
    return set("", "");
  };
  auto load = [](const std::filesystem::path& p) { return [p] { load_llama(p); }; };

  // The untouched file loads.
  EXPECT_NO_THROW(load_llama(good));

  auto p = variant(set("strata.layers", "{not json"));
  expect_error(load(p), {p.filename().string(), "strata.layers", "invalid JSON"});
  p = variant(set("strata.format", "2"));
  expect_error(load(p), {p.filename().string(), "strata.format"});
  p = variant(set("strata.config", "[1, 2]"));
  expect_error(load(p), {p.filename().string(), "strata.config", "object"});
  expect_error([&] { io::open_model(p); }, {"strata.config"});
  p = variant(set("strata.source_metadata", "{\"a\": "));
  expect_error(load(p), {p.filename().string(), "strata.source_metadata"});
  p = variant(set("strata.tensors", "{\"blk.0.attn_norm.weight\": {\"ggml_type\": \"Q4_9\", \"shape\": [64]}}"));
  expect_error(load(p), {"blk.0.attn_norm.weight", "Q4_9"});
  p = variant(edit_layer([](nlohmann::json& l) { l.erase("method"); }));
  expect_error(load(p), {"layer 'blk.0.attn_q.weight'", "'method'"});
  p = variant(edit_layer([](nlohmann::json& l) { l["method"] = "lowrank.nope"; }));
  expect_error(load(p), {"layer 'blk.0.attn_q.weight'", "lowrank.nope"});
  p = variant(edit_layer([](nlohmann::json& l) { l["rows"] = -3; }));
  expect_error(load(p), {"layer 'blk.0.attn_q.weight'", "'rows'"});
  p = variant(edit_layer([](nlohmann::json& l) { l["parts"]["a"]["shape"] = {64, 31}; }));
  expect_error(load(p), {"part 'a'", "blk.0.attn_q.weight#a"});
  p = variant(edit_layer([](nlohmann::json& l) { l["parts"]["a"]["dtype"] = "q9"; }));
  expect_error(load(p), {"part 'a'", "dtype"});
  p = variant(edit_layer([](nlohmann::json& l) { l["rows"] = 32; }));
  expect_error(load(p), {"layer 'blk.0.attn_q.weight'", "lowrank.svd"});
  p = variant([](io::StringPairs&) {},
              [](std::vector<io::SafetensorsEntry>& e) {
                std::erase_if(e, [](const io::SafetensorsEntry& x) { return x.name == "blk.0.attn_q.weight#b"; });
              });
  expect_error(load(p), {"blk.0.attn_q.weight#b", "missing"});
  p = variant([](io::StringPairs&) {},
              [&](std::vector<io::SafetensorsEntry>& e) {
                e.push_back({"blk.0.attn_q.weight#c", "F32", Shape{1}, st.raw(st.tensors()[0]).first(4)});
              });
  expect_error(load(p), {"blk.0.attn_q.weight#c"});
}

// ---- SmolLM2-135M -----------------------------------------------------------------------------------

class SmolLM2 : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!std::filesystem::exists(smollm_path())) return;
    file_ = io::open_gguf(smollm_path());
    // In its stored types, as load_llama() runs a GGUF, so that logits can be compared bit for bit.
    base_ = new nn::LlamaModel(nn::LlamaModel::load_stored(file_));
  }
  static void TearDownTestSuite() {
    delete base_;
    base_ = nullptr;
    file_.reset();
  }
  void SetUp() override {
    STRATA_REQUIRE_FILE(smollm_path(), "run scripts/fetch-models.sh");
    const auto tok = nn::BpeTokenizer::from_model(*file_);
    tokens_ = tok.encode("The old lighthouse keeper counted the ships that passed, one by one, until night fell.");
  }

  static std::shared_ptr<io::Model> file_;
  static nn::LlamaModel* base_;
  TempDir dir_;
  std::vector<int32_t> tokens_;
};
std::shared_ptr<io::Model> SmolLM2::file_;
nn::LlamaModel* SmolLM2::base_ = nullptr;

TEST_F(SmolLM2, GgufWithKQuantsAndFallbacks) {
  const io::GgufFile src = io::GgufFile::open(smollm_path());
  // llama.cpp's rule for rows that are no whole number of 256-element super-blocks.
  ASSERT_EQ(ggml::fallback_type(GgmlType::Q3_K, 576), GgmlType::IQ4_NL);
  ASSERT_EQ(ggml::fallback_type(GgmlType::Q2_K, 576), GgmlType::IQ4_NL);
  const std::vector<std::tuple<std::string, GgmlType, int64_t>> plan = {
      {"blk.0.attn_q.weight", GgmlType::Q3_K, 576},   {"blk.0.ffn_down.weight", GgmlType::Q3_K, 1536},
      {"blk.1.attn_k.weight", GgmlType::Q2_K, 576},   {"blk.1.ffn_down.weight", GgmlType::Q2_K, 1536},
      {"blk.2.ffn_up.weight", GgmlType::Q3_K, 576},
  };
  LayerMap layers;
  std::map<std::string, GgmlType> types;
  for (const auto& [name, wanted, cols] : plan) {
    const GgmlType t = ggml::fallback_type(wanted, cols);
    layers.emplace(name, compress(*file_, name, "quant.ggml", ggml::lower_name(t)));
    types[name] = t;
  }
  EXPECT_EQ(types.at("blk.0.ffn_down.weight"), GgmlType::Q3_K);
  EXPECT_EQ(types.at("blk.1.ffn_down.weight"), GgmlType::Q2_K);
  EXPECT_EQ(types.at("blk.0.attn_q.weight"), GgmlType::IQ4_NL);

  const std::vector<std::pair<std::string, std::string>> extra = {{"strata.plan", "{\"layers\": 5}"}};
  const auto out = dir_.path() / "smollm2-mix.gguf";
  const GgufWriteInfo info = write_gguf(src, layers, out, extra);
  check_written_gguf(src, layers, out, info, types, extra);
  // Q4_1 still holds most weights, so the file type is the source's.
  EXPECT_EQ(info.file_type, 3);
  EXPECT_EQ(src.get_int("general.file_type"), 3);
  RecordProperty("smollm2_gguf_bytes", std::to_string(info.file_bytes));
  RecordProperty("smollm2_gguf_overhead", std::to_string(info.overhead_bytes));

  const LoadedModel loaded = load_llama(out);
  const auto want = logits(with_layers(*base_, layers, true), tokens_);
  EXPECT_EQ(mismatches(logits(loaded.model, tokens_), want), 0u);
  const auto tok = nn::BpeTokenizer::from_model(*loaded.file);
  EXPECT_EQ(tok.encode("one by one"), nn::BpeTokenizer::from_model(*file_).encode("one by one"));
}

// X^T X / N of the inputs of block 0's linear layers, from a real forward pass.
class Block0Hessians : public nn::ForwardHooks {
 public:
  void on_linear_input(int layer, std::span<const std::string> tensors, const float* x, int64_t tokens,
                       int64_t in) override {
    if (layer != 0) return;
    const Matrix<double> xd = Eigen::Map<const RowMatrix<float>>(x, tokens, in).cast<double>();
    const Matrix<double> h = xd.transpose() * xd / static_cast<double>(tokens);
    for (const auto& name : tensors) hessians[name] = h;
  }
  std::map<std::string, Matrix<double>> hessians;
};

TEST_F(SmolLM2, SafetensorsKeepsTokenizerConfigAndLogits) {
  const auto tok = nn::BpeTokenizer::from_model(*file_);
  Block0Hessians hook;
  {
    const auto calib_tokens = tok.encode(
        "Call me Ishmael. Some years ago, never mind how long precisely, having little or no money in my purse, "
        "and nothing particular to interest me on shore, I thought I would sail about a little and see the watery "
        "part of the world.");
    nn::LlamaSession s(*base_, static_cast<int64_t>(calib_tokens.size()));
    s.forward(calib_tokens, nullptr, nn::Logits::none, &hook);
  }
  auto with_h = [&](const std::string& name, const std::string& method, const std::string& knob) {
    const Matrix<double>& h = hook.hessians.at(name);
    return compress(*file_, name, method, knob, LayerCalibration{&h, nullptr, nullptr, 1});
  };
  LayerMap layers;
  layers.emplace("blk.0.attn_q.weight", with_h("blk.0.attn_q.weight", "lowrank.svdllm", "keep=0.3"));
  layers.emplace("blk.0.ffn_gate.weight", with_h("blk.0.ffn_gate.weight", "prune.sparsegpt", "pattern=2:4"));
  layers.emplace("blk.0.ffn_down.weight", with_h("blk.0.ffn_down.weight", "quant.gptq", "bits=4,group=128"));

  const auto out = dir_.path() / "smollm2.strata.safetensors";
  write_strata_safetensors(*file_, layers, out);
  RecordProperty("smollm2_safetensors_bytes", std::to_string(std::filesystem::file_size(out)));
  const LoadedModel loaded = load_llama(out);
  expect_same_config(loaded.file->config(), file_->config());
  // GGUF block tensors are kept as raw bytes, float32 ones as float32.
  EXPECT_EQ(loaded.file->tensor("blk.1.attn_q.weight").type, "U8");
  EXPECT_EQ(loaded.file->tensor("blk.1.attn_norm.weight").type, "F32");

  const auto tok2 = nn::BpeTokenizer::from_model(*loaded.file);
  ASSERT_EQ(tok2.vocab_size(), tok.vocab_size());
  for (int32_t id = 0; id < tok.vocab_size(); ++id) {
    ASSERT_EQ(tok2.token(id), tok.token(id)) << id;
    ASSERT_EQ(tok2.token_type(id), tok.token_type(id)) << id;
  }
  EXPECT_EQ(tok2.bos_id(), tok.bos_id());
  EXPECT_EQ(tok2.eos_id(), tok.eos_id());
  EXPECT_EQ(tok2.pre_tokenizer(), tok.pre_tokenizer());
  const std::string text = "<|im_start|>user\nIn 1851, 3 ships sailed; naïve whalers counted 42 of them.<|im_end|>";
  EXPECT_EQ(tok2.encode(text, {.parse_special = true}), tok.encode(text, {.parse_special = true}));

  const auto want = logits(with_layers(*base_, layers, true), tokens_);
  EXPECT_EQ(mismatches(logits(loaded.model, tokens_), want), 0u);
}

}  // namespace
}  // namespace strata::compress
