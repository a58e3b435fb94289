#include "strata/io/safetensors.hpp"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>

#include "strata/io/mapped_file.hpp"
#include "test_util.hpp"

namespace strata::io {
namespace {

using ::testing::HasSubstr;

// A fresh folder per test, removed afterwards.
class TempDir {
 public:
  TempDir() {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    path_ = std::filesystem::temp_directory_path() /
            ("strata_st_" + std::to_string(::getpid()) + "_" + info->test_suite_name() + "_" + info->name());
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  std::filesystem::path operator/(const std::string& name) const { return path_ / name; }
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

std::vector<std::byte> read_all(const std::filesystem::path& p) {
  MappedFile f(p);
  return {f.bytes().begin(), f.bytes().end()};
}

void write_all(const std::filesystem::path& p, std::span<const std::byte> bytes) {
  std::ofstream out(p, std::ios::binary);
  out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}

// A file from a header given as text, with `data_bytes` bytes of data after it (unpadded).
std::vector<std::byte> make_file(std::string_view header, uint64_t data_bytes) {
  std::vector<std::byte> out(8 + header.size() + data_bytes, std::byte{0});
  const uint64_t n = header.size();
  std::memcpy(out.data(), &n, 8);
  std::memcpy(out.data() + 8, header.data(), header.size());
  for (uint64_t i = 0; i < data_bytes; ++i) out[8 + header.size() + i] = static_cast<std::byte>(i * 7 + 1);
  return out;
}

std::string error_of(std::span<const std::byte> bytes) {
  try {
    parse_safetensors(bytes, "bad.safetensors");
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}
std::string error_of(std::string_view header, uint64_t data_bytes) {
  return error_of(make_file(header, data_bytes));
}

// Element values each dtype can hold exactly, and their encodings.
struct Sample {
  std::string dtype;
  std::vector<float> values;
  std::vector<std::byte> bytes;
};

template <class T>
Sample encode(std::string dtype, std::vector<float> values) {
  Sample s{std::move(dtype), values, {}};
  s.bytes.resize(values.size() * sizeof(T));
  for (std::size_t i = 0; i < values.size(); ++i) {
    T v;
    if constexpr (std::is_same_v<T, f16>) v = f32_to_f16(values[i]);
    else if constexpr (std::is_same_v<T, bf16>) v = f32_to_bf16(values[i]);
    else v = static_cast<T>(values[i]);
    std::memcpy(s.bytes.data() + i * sizeof(T), &v, sizeof(T));
  }
  return s;
}

Sample raw_bytes(std::string dtype, std::vector<float> values, std::vector<uint8_t> codes) {
  Sample s{std::move(dtype), std::move(values), {}};
  for (auto c : codes) s.bytes.push_back(static_cast<std::byte>(c));
  return s;
}

const Sample& by_dtype(const std::vector<Sample>& all, std::string_view dtype) {
  for (const auto& s : all)
    if (s.dtype == dtype) return s;
  throw std::logic_error("no sample for " + std::string(dtype));
}

std::vector<Sample> samples() {
  const std::vector<float> sig = {-3, -2, -1, 0, 1, 2};
  const std::vector<float> uns = {0, 1, 2, 3, 4, 250};
  const std::vector<float> flt = {-2.5f, -1, 0, 0.5f, 1, 3};
  return {
      raw_bytes("BOOL", {0, 1, 1, 0, 1, 0}, {0, 1, 1, 0, 1, 0}),
      encode<uint8_t>("U8", uns),
      encode<int8_t>("I8", sig),
      raw_bytes("F8_E5M2", {0, 1, 2, -2, 0.5f, 3}, {0x00, 0x3C, 0x40, 0xC0, 0x38, 0x42}),
      raw_bytes("F8_E4M3", {0, 1, 2, -2, 0.5f, 448}, {0x00, 0x38, 0x40, 0xC0, 0x30, 0x7E}),
      raw_bytes("F8_E8M0", {1, 2, 0.5f, 0x1p-127f, 0x1p127f, 0.25f}, {127, 128, 126, 0, 254, 125}),
      encode<int16_t>("I16", {-30000, -2, -1, 0, 1, 30000}),
      encode<uint16_t>("U16", {0, 1, 2, 3, 4, 65535}),
      encode<f16>("F16", flt),
      encode<bf16>("BF16", flt),
      encode<int32_t>("I32", {-2000000, -2, -1, 0, 1, 2000000}),
      encode<uint32_t>("U32", uns),
      encode<float>("F32", {-2.5f, 1e-30f, 0, 0.1f, 1, 3e30f}),
      encode<double>("F64", flt),
      encode<int64_t>("I64", sig),
      encode<uint64_t>("U64", uns),
  };
}

TEST(SafetensorsDType, TableCoversTheReferenceTypesInEnumOrder) {
  const auto all = safetensors_dtypes();
  ASSERT_EQ(all.size(), 20u);
  for (std::size_t i = 0; i < all.size(); ++i) EXPECT_EQ(all[i].rank, static_cast<int>(i));
  EXPECT_EQ(all.front().name, "BOOL");
  EXPECT_EQ(all.back().name, "U64");
  EXPECT_EQ(safetensors_dtype("BF16")->bits, 16);
  EXPECT_EQ(safetensors_dtype("I64")->bits, 64);
  EXPECT_EQ(safetensors_dtype("F4")->bits, 4);
  EXPECT_FALSE(safetensors_dtype("Q4_K").has_value());
  EXPECT_FALSE(safetensors_dtype("f32").has_value());  // names are case-sensitive
}

TEST(SafetensorsWrite, MatchesTheReferenceImplementationBytes) {
  // Expected outputs of the reference implementation's serializer for these inputs.
  std::vector<float> v = {0, 1, 2, 3, 4, 5};
  const auto data = std::as_bytes(std::span<const float>(v));
  {
    const SafetensorsEntry e{"attn.0", "F32", Shape{1, 2, 3}, data};
    const std::string h = safetensors_header_bytes(std::span(&e, 1), nullptr);
    const std::string json = R"({"attn.0":{"dtype":"F32","shape":[1,2,3],"data_offsets":[0,24]}})";
    ASSERT_EQ(json.size(), 64u);
    EXPECT_EQ(h.substr(8), json);
    EXPECT_EQ(static_cast<uint8_t>(h[0]), 64);
  }
  {
    const SafetensorsEntry e{"attn0", "F32", Shape{1, 1, 2, 3}, data};
    const std::string h = safetensors_header_bytes(std::span(&e, 1), nullptr);
    EXPECT_EQ(static_cast<uint8_t>(h[0]), 72);
    EXPECT_EQ(h.substr(8), std::string(R"({"attn0":{"dtype":"F32","shape":[1,1,2,3],"data_offsets":[0,24]}})") + "       ");
  }
  {
    const std::string h = safetensors_header_bytes({}, nullptr);
    EXPECT_EQ(h, std::string("\x08\0\0\0\0\0\0\0{}      ", 16));
  }
  {
    const StringPairs meta = {{"framework", "pt"}};
    const std::string h = safetensors_header_bytes({}, &meta);
    EXPECT_EQ(static_cast<uint8_t>(h[0]), 40);
    EXPECT_EQ(h.substr(8), std::string(R"({"__metadata__":{"framework":"pt"}})") + "     ");
  }
}

TEST(SafetensorsWrite, RoundTripOfEveryDType) {
  TempDir dir;
  const auto all = samples();
  std::vector<SafetensorsEntry> entries;
  for (const auto& s : all) entries.push_back({"t." + s.dtype, s.dtype, Shape{2, 3}, s.bytes});
  entries.push_back({"scalar", "F32", Shape{}, by_dtype(all, "F32").bytes});  // rank 0 holds one element
  entries.back().data = entries.back().data.subspan(0, 4);
  entries.push_back({"empty", "F16", Shape{0, 5}, {}});
  const StringPairs meta = {{"format", "pt"}, {"note", "line\nbreak \"quoted\" \xc3\xa9"}};
  write_safetensors(dir / "all.safetensors", entries, &meta);

  SafetensorsModel m(dir / "all.safetensors");
  ASSERT_EQ(m.tensors().size(), entries.size());
  EXPECT_EQ(m.file_metadata(), meta);
  EXPECT_EQ(m.metadata()["__metadata__"]["note"], meta[1].second);
  for (const auto& s : all) {
    SCOPED_TRACE(s.dtype);
    const auto& t = m.tensor("t." + s.dtype);
    EXPECT_EQ(t.type, s.dtype);
    EXPECT_EQ(t.shape, (Shape{2, 3}));
    const auto raw = m.raw(t);
    ASSERT_EQ(raw.size(), s.bytes.size());
    EXPECT_EQ(std::memcmp(raw.data(), s.bytes.data(), raw.size()), 0);
    const Tensor f = m.to_f32(t);
    for (int i = 0; i < 6; ++i) EXPECT_EQ(f.view<float>().data()[i], s.values[static_cast<std::size_t>(i)]) << i;
  }
  EXPECT_EQ(m.tensor("scalar").shape.rank(), 0);
  EXPECT_EQ(m.to_f32("scalar").view<float>().data()[0], -2.5f);
  EXPECT_EQ(m.tensor("empty").nbytes, 0u);
  EXPECT_EQ(m.to_f32("empty").numel(), 0);

  // The layout is the reference one: larger dtype ranks first, then names, data 8-byte aligned.
  std::vector<std::string> order;
  for (const auto& t : m.tensors()) order.push_back(t.name);
  EXPECT_EQ(order.front(), "t.U64");
  EXPECT_EQ(order.back(), "t.BOOL");
  EXPECT_EQ(m.tensors().front().offset % 8, 0u);

  // Reading and writing back gives the same bytes.
  write_safetensors(dir / "again.safetensors", m);
  EXPECT_EQ(read_all(dir / "all.safetensors"), read_all(dir / "again.safetensors"));
}

TEST(SafetensorsWrite, AsGivenOrderKeepsTheEntriesOrder) {
  TempDir dir;
  const auto s = samples();
  std::vector<SafetensorsEntry> e = {{"b", "U8", Shape{6}, by_dtype(s, "U8").bytes}, {"a", "F64", Shape{6}, by_dtype(s, "F64").bytes}};
  write_safetensors(dir / "x.safetensors", e, nullptr, TensorOrder::as_given);
  SafetensorsModel m(dir / "x.safetensors");
  EXPECT_EQ(m.tensors()[0].name, "b");
  EXPECT_EQ(m.tensors()[1].name, "a");
  EXPECT_FALSE(m.has_file_metadata());
  // F64 data now sits at an odd offset; conversion must still be exact.
  EXPECT_EQ(m.to_f32("a").view<float>().data()[5], 3.0f);
}

TEST(SafetensorsWrite, RejectsInconsistentEntriesAndLeavesNoFile) {
  TempDir dir;
  std::vector<std::byte> four(4);
  const auto p = dir / "x.safetensors";
  auto expect_error = [&](std::vector<SafetensorsEntry> e, const char* what) {
    try {
      write_safetensors(p, e, nullptr);
      ADD_FAILURE() << "no error for " << what;
    } catch (const Error& err) {
      EXPECT_THAT(err.what(), HasSubstr(what));
      EXPECT_THAT(err.what(), HasSubstr(p.string()));
    }
    EXPECT_FALSE(std::filesystem::exists(p));
  };
  expect_error({{"w", "F32", Shape{2}, four}}, "tensor 'w'");
  expect_error({{"w", "F33", Shape{1}, four}}, "not a safetensors dtype");
  expect_error({{"w", "F32", Shape{1}, four}, {"w", "I32", Shape{1}, four}}, "appears twice");
  expect_error({{"__metadata__", "F32", Shape{1}, four}}, "reserved");
  expect_error({{"bad\xff", "F32", Shape{1}, four}}, "UTF-8");
  EXPECT_TRUE(std::filesystem::is_empty(dir.path()));
}

TEST(SafetensorsWrite, SubByteAndComplexTypesAreStoredButNotConverted) {
  TempDir dir;
  std::vector<std::byte> bytes(16, std::byte{0x21});
  const std::vector<SafetensorsEntry> e = {{"f4", "F4", Shape{2, 2}, std::span(bytes).first(2)},
                                           {"f6", "F6_E2M3", Shape{4}, std::span(bytes).first(3)},
                                           {"c", "C64", Shape{2}, bytes}};
  write_safetensors(dir / "x.safetensors", e, nullptr);
  SafetensorsModel m(dir / "x.safetensors");
  EXPECT_EQ(m.tensor("f4").nbytes, 2u);
  EXPECT_EQ(m.tensor("f6").nbytes, 3u);
  EXPECT_EQ(m.tensor("c").nbytes, 16u);
  EXPECT_THAT([&] { m.to_f32("f4"); }, ::testing::ThrowsMessage<Error>(HasSubstr("tensor 'f4': cannot convert type 'F4'")));
  EXPECT_THAT([&] { m.to_f32("c"); }, ::testing::ThrowsMessage<Error>(HasSubstr("C64")));
  const SafetensorsEntry odd{"f4", "F4", Shape{3}, std::span(bytes).first(2)};
  EXPECT_THAT([&] { safetensors_header_bytes(std::span(&odd, 1), nullptr); },
              ::testing::ThrowsMessage<Error>(HasSubstr("does not fill a whole number of bytes")));
}

TEST(SafetensorsRead, FileWrittenByTheReferenceImplementation) {
  // Written by the Python safetensors 0.8.0 (numpy binding); see tests/data/safetensors/README.md.
  const auto path = testing::test_data_dir() / "safetensors" / "reference_mixed.safetensors";
  STRATA_REQUIRE_FILE(path, "committed test data");
  SafetensorsModel m(path);
  ASSERT_EQ(m.tensors().size(), 15u);
  EXPECT_EQ(m.file_metadata(), (StringPairs{{"format", "np"}}));
  EXPECT_EQ(m.tensor("pos.i64").shape, (Shape{1, 4}));
  EXPECT_EQ(m.tensor("scalar").shape.rank(), 0);
  EXPECT_EQ(m.tensor("nothing").shape, (Shape{0, 3}));
  auto values = [&](const char* name) {
    const Tensor t = m.to_f32(name);
    return std::vector<float>(t.view<float>().data(), t.view<float>().data() + t.numel());
  };
  EXPECT_EQ(values("emb.f32"), (std::vector<float>{0, 0.25f, 0.5f, 0.75f, 1, 1.25f, 1.5f, 1.75f, 2, 2.25f, 2.5f, 2.75f}));
  EXPECT_EQ(values("layers.1.f16"), (std::vector<float>{0.5f, -2, 65504}));
  EXPECT_EQ(values("layers.1.i16"), (std::vector<float>{-32768, 2, 3, 32767}));
  EXPECT_EQ(values("layers.0.i8"), (std::vector<float>{-128, -1, 0, 1, 127}));
  EXPECT_EQ(values("layers.0.b"), (std::vector<float>{1, 0, 1}));
  EXPECT_EQ(values("emb.u32"), (std::vector<float>{4e9f}));
  EXPECT_EQ(values("emb.f64"), (std::vector<float>{static_cast<float>(1e-300), -1.5f}));
  EXPECT_EQ(values("pos.u64"), (std::vector<float>{0x1p63f}));
  EXPECT_EQ(values("scalar"), (std::vector<float>{3.25f}));

  TempDir dir;
  write_safetensors(dir / "copy.safetensors", m);
  EXPECT_EQ(read_all(path), read_all(dir / "copy.safetensors"));
  // Writing the same tensors in arbitrary order with the reference rule restores the layout too.
  std::vector<SafetensorsEntry> entries;
  for (auto it = m.tensors().rbegin(); it != m.tensors().rend(); ++it)
    entries.push_back({it->name, it->type, it->shape, m.raw(*it)});
  write_safetensors(dir / "sorted.safetensors", entries, &m.file_metadata(), TensorOrder::reference);
  EXPECT_EQ(read_all(path), read_all(dir / "sorted.safetensors"));
}

// ---- reading hostile input ------------------------------------------------------------------------

constexpr std::string_view kGood =
    R"({"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},)"
    R"("b":{"dtype":"I8","shape":[3],"data_offsets":[16,19]}})";

TEST(SafetensorsRead, ParsesAValidHeader) {
  const auto bytes = make_file(kGood, 19);
  const auto h = parse_safetensors(bytes, "good.safetensors");
  ASSERT_EQ(h.tensors.size(), 2u);
  EXPECT_EQ(h.tensors[0].name, "a");
  EXPECT_EQ(h.tensors[0].offset, 8 + kGood.size());
  EXPECT_EQ(h.tensors[1].offset, 8 + kGood.size() + 16);
  EXPECT_EQ(h.tensors[1].nbytes, 3u);
  EXPECT_EQ(h.metadata, (StringPairs{{"format", "pt"}}));
}

TEST(SafetensorsRead, EveryTruncationIsAnError) {
  const auto bytes = make_file(kGood, 19);
  for (std::size_t n = 0; n < bytes.size(); ++n) {
    SCOPED_TRACE(n);
    EXPECT_THROW(parse_safetensors(std::span(bytes).first(n), "cut.safetensors"), Error);
  }
}

TEST(SafetensorsRead, BitFlipsGiveErrorsOrAConsistentParse) {
  const auto good = make_file(kGood, 19);
  int errors = 0;
  for (std::size_t i = 0; i < good.size(); ++i) {
    for (int bit = 0; bit < 8; ++bit) {
      auto bytes = good;
      bytes[i] ^= static_cast<std::byte>(1 << bit);
      try {
        const auto h = parse_safetensors(bytes, "flip.safetensors");
        uint64_t end = 8 + h.header_size;
        for (const auto& t : h.tensors) {
          EXPECT_EQ(t.offset, end);
          end += t.nbytes;
        }
        EXPECT_EQ(end, bytes.size());
      } catch (const Error&) {
        ++errors;
      }
    }
  }
  // Every flip in the length field is caught, and most flips in the JSON.
  EXPECT_GT(errors, 64 + static_cast<int>(kGood.size()) * 4);
}

TEST(SafetensorsRead, ForgedSizesAndBrokenHeadersNameTheProblem) {
  // Header length past the end, or absurdly large.
  auto bytes = make_file(kGood, 19);
  uint64_t n = bytes.size();
  std::memcpy(bytes.data(), &n, 8);
  EXPECT_THAT(error_of(bytes), HasSubstr("runs past the end"));
  n = uint64_t{1} << 63;
  std::memcpy(bytes.data(), &n, 8);
  EXPECT_THAT(error_of(bytes), HasSubstr("exceeds the limit"));
  // Header length shorter than the JSON: it is cut and no longer parses.
  n = kGood.size() - 1;
  std::memcpy(bytes.data(), &n, 8);
  EXPECT_THAT(error_of(bytes), HasSubstr("invalid JSON"));

  EXPECT_THAT(error_of(kGood, 18), HasSubstr("tensor 'b': data_offsets: end 19 lies past the end"));
  EXPECT_THAT(error_of(kGood, 20), HasSubstr("1 bytes after the last tensor"));
  EXPECT_THAT(error_of(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", 8),
              HasSubstr("tensor 'a': data_offsets: begin 8 is after end 0"));
  EXPECT_THAT(error_of(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8),
              HasSubstr("holds 8 bytes but shape [3] of F32 needs 12"));
  EXPECT_THAT(error_of(R"({"a":{"dtype":"U8","shape":[8],"data_offsets":[0,8]},"b":{"dtype":"U8","shape":[4],"data_offsets":[4,8]}})", 8),
              HasSubstr("overlap tensor 'a'"));
  EXPECT_THAT(error_of(R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[4,8]}})", 8),
              HasSubstr("leaving bytes [0, 4) of the data unused"));
  EXPECT_THAT(error_of(R"({"a":{"dtype":"U8","shape":[-4],"data_offsets":[0,4]}})", 4),
              HasSubstr("tensor 'a': shape: expected a non-negative integer, got -4"));
  EXPECT_THAT(error_of(R"({"a":{"dtype":"U8","shape":[4.0],"data_offsets":[0,4]}})", 4), HasSubstr("shape"));
  EXPECT_THAT(error_of(R"({"a":{"dtype":"U8","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,4]}})", 4),
              HasSubstr("element count overflows"));
  EXPECT_THAT(error_of(R"({"a":{"dtype":"U8","shape":[1,1,1,1,1,1,1,1,1],"data_offsets":[0,1]}})", 1),
              HasSubstr("rank 9 exceeds"));
  EXPECT_THAT(error_of(R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,18446744073709551616]}})", 1),
              HasSubstr("data_offsets"));
  EXPECT_THAT(error_of(R"({"a":{"dtype":"F31","shape":[1],"data_offsets":[0,4]}})", 4),
              HasSubstr("tensor 'a': dtype: unknown type 'F31'"));
  EXPECT_THAT(error_of(R"({"a":{"dtype":"F32","data_offsets":[0,4]}})", 4), HasSubstr("tensor 'a': missing field 'shape'"));
  EXPECT_THAT(error_of(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0]}})", 4), HasSubstr("expected [begin, end]"));
  EXPECT_THAT(error_of(R"({"a":[1,2]})", 0), HasSubstr("tensor 'a': expected an object"));
  EXPECT_THAT(error_of(R"({"__metadata__":{"k":1}})", 0), HasSubstr("__metadata__: key 'k': expected a string"));
  EXPECT_THAT(error_of(R"({"__metadata__":[]})", 0), HasSubstr("__metadata__: expected an object"));
  EXPECT_THAT(error_of(R"([{"a":1}])", 0), HasSubstr("does not start with '{'"));
  EXPECT_THAT(error_of(R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}})", 1),
              HasSubstr("key 'a' appears twice"));
  EXPECT_THAT(error_of("{\"a\xff\":1}", 0), HasSubstr("invalid JSON"));
  EXPECT_THAT(error_of(std::string("{\"a\":") + std::string(100000, '[') + std::string(100000, ']') + "}", 0),
              HasSubstr("nested deeper"));
  EXPECT_THAT(error_of("{} trailing", 0), HasSubstr("invalid JSON"));
  // Every message starts with the file.
  EXPECT_THAT(error_of(R"({"a":[1,2]})", 0), ::testing::StartsWith("bad.safetensors: "));
}

TEST(SafetensorsRead, OpenNamesTheFileInErrors) {
  TempDir dir;
  auto bytes = make_file(kGood, 19);
  bytes.pop_back();
  write_all(dir / "cut.safetensors", bytes);
  try {
    open_safetensors(dir / "cut.safetensors");
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr((dir / "cut.safetensors").string() + ": tensor 'b'"));
  }
  EXPECT_THROW(open_safetensors(dir / "missing.safetensors"), Error);
}

// ---- sharded checkpoints and config.json ----------------------------------------------------------

TEST(SafetensorsShards, OpensAnIndexAsOneModel) {
  TempDir dir;
  const auto s = samples();
  const SafetensorsEntry a{"model.layers.0.w", "F32", Shape{6}, by_dtype(s, "F32").bytes};
  const SafetensorsEntry b{"model.layers.1.w", "BF16", Shape{2, 3}, by_dtype(s, "BF16").bytes};
  const StringPairs meta = {{"format", "pt"}};
  write_safetensors(dir / "model-00001-of-00002.safetensors", std::span(&a, 1), &meta);
  write_safetensors(dir / "model-00002-of-00002.safetensors", std::span(&b, 1), &meta);
  std::ofstream(dir / "model.safetensors.index.json") << R"({"metadata":{"total_size":36},"weight_map":{
      "model.layers.1.w":"model-00002-of-00002.safetensors","model.layers.0.w":"model-00001-of-00002.safetensors"}})";
  std::ofstream(dir / "config.json") << R"({"model_type":"llama","num_hidden_layers":2,"hidden_size":6,
      "intermediate_size":16,"num_attention_heads":3,"num_key_value_heads":1,"vocab_size":100,
      "max_position_embeddings":64,"rms_norm_eps":1e-6,"rope_theta":500000.0,"tie_word_embeddings":true})";

  const auto m = open_safetensors(dir / "model.safetensors.index.json");
  ASSERT_EQ(m->tensors().size(), 2u);
  EXPECT_EQ(m->tensor("model.layers.0.w").shard, 0);
  EXPECT_EQ(m->tensor("model.layers.1.w").shard, 1);
  EXPECT_EQ(m->to_f32("model.layers.1.w").view<float>().data()[5], 3.0f);
  EXPECT_EQ(m->metadata()["index"]["total_size"], 36);
  const auto& c = m->config();
  EXPECT_EQ(c.architecture, "llama");
  EXPECT_EQ(c.n_layers, 2);
  EXPECT_EQ(c.n_kv_heads, 1);
  EXPECT_EQ(c.head_dim, 2);
  EXPECT_EQ(c.rope_theta, 500000.0);
  EXPECT_EQ(c.norm_eps, 1e-6);
  EXPECT_TRUE(c.tied_embeddings);
  EXPECT_EQ(dynamic_cast<const SafetensorsModel&>(*m).shard_paths().size(), 2u);

  // An index that disagrees with its shards, or points outside its folder, is refused.
  std::ofstream(dir / "wrong.index.json") << R"({"weight_map":{"model.layers.0.w":"model-00002-of-00002.safetensors",
      "model.layers.1.w":"model-00002-of-00002.safetensors"}})";
  EXPECT_THROW(open_safetensors(dir / "wrong.index.json"), Error);
  std::ofstream(dir / "escape.index.json") << R"({"weight_map":{"x":"../x.safetensors"}})";
  try {
    open_safetensors(dir / "escape.index.json");
    FAIL();
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("not a plain file name"));
  }
  std::ofstream(dir / "extra.index.json") << R"({"weight_map":{"model.layers.0.w":"model-00001-of-00002.safetensors",
      "model.layers.9.w":"model-00001-of-00002.safetensors"}})";
  EXPECT_THROW(open_safetensors(dir / "extra.index.json"), Error);
}

TEST(SafetensorsConfig, BadTypesNameTheKey) {
  const auto c = nlohmann::json::parse(R"({"hidden_size":"384"})");
  try {
    config_from_hf_json(c, "config.json");
    FAIL();
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("config.json: 'hidden_size'"));
  }
}

// ---- a real checkpoint ----------------------------------------------------------------------------

TEST(SafetensorsMiniLM, ListsTheTensorsAndRoundTripsByteForByte) {
  const auto path = testing::models_dir() / "all-minilm-l6-v2" / "model.safetensors";
  STRATA_REQUIRE_FILE(path, "run scripts/fetch-models.sh");
  const auto m = open_safetensors(path);
  const auto& emb = m->tensor("embeddings.word_embeddings.weight");
  EXPECT_EQ(emb.shape, (Shape{30522, 384}));
  EXPECT_EQ(emb.type, "F32");
  EXPECT_EQ(m->tensor("embeddings.position_ids").type, "I64");
  EXPECT_EQ(m->tensor("encoder.layer.5.output.dense.weight").shape, (Shape{384, 1536}));
  EXPECT_EQ(m->find("encoder.layer.6.output.dense.weight"), nullptr);
  const auto blocks = m->blocks();
  ASSERT_EQ(blocks.size(), 7u);  // embeddings/pooler, then layers 0..5
  EXPECT_EQ(blocks.front().index, -1);
  EXPECT_EQ(blocks.back().index, 5);
  EXPECT_EQ(blocks[1].tensors.size(), 16u);
  EXPECT_EQ(m->config().architecture, "bert");
  EXPECT_EQ(m->config().n_layers, 6);
  EXPECT_EQ(m->config().dim, 384);
  EXPECT_EQ(m->config().hidden_dim, 1536);
  EXPECT_EQ(m->config().n_heads, 12);
  EXPECT_EQ(m->config().vocab_size, 30522);
  EXPECT_EQ(m->config().context_length, 512);
  EXPECT_EQ(m->config().norm_eps, 1e-12);
  const Tensor pos = m->to_f32("embeddings.position_ids");
  EXPECT_EQ(pos.view<float>().data()[511], 511.0f);

  TempDir dir;
  write_safetensors(dir / "copy.safetensors", *m);
  MappedFile a(path), b(dir / "copy.safetensors");
  ASSERT_EQ(a.size(), b.size());
  EXPECT_EQ(std::memcmp(a.bytes().data(), b.bytes().data(), a.size()), 0);
}

}  // namespace
}  // namespace strata::io
