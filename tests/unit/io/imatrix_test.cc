#include "strata/io/imatrix.hpp"

#include <gtest/gtest.h>

#include <cstring>
#include <map>
#include <random>
#include <unistd.h>

#include "strata/core/error.hpp"
#include "strata/io/gguf.hpp"
#include "strata/nn/calibration.hpp"
#include "test_util.hpp"

namespace strata::io {
namespace {

template <class T>
void put(std::vector<std::byte>& out, T v) {
  const auto* p = reinterpret_cast<const std::byte*>(&v);
  out.insert(out.end(), p, p + sizeof(T));
}
void put_name(std::vector<std::byte>& out, const std::string& s) {
  put(out, static_cast<int32_t>(s.size()));
  for (char c : s) out.push_back(static_cast<std::byte>(c));
}

// The legacy layout written by hand: two entries, then the chunk count and the dataset name.
std::vector<std::byte> hand_legacy() {
  std::vector<std::byte> b;
  put(b, int32_t{2});
  put_name(b, "blk.0.ffn_down.weight");
  put(b, int32_t{4});  // ncall
  put(b, int32_t{3});
  for (float v : {4.0f, 8.0f, 2.0f}) put(b, v);
  put_name(b, "blk.0.attn_q.weight");
  put(b, int32_t{2});
  put(b, int32_t{2});
  for (float v : {1.0f, 0.5f}) put(b, v);
  put(b, int32_t{10});
  put_name(b, "wiki.train.raw");
  return b;
}

TEST(Imatrix, HandWrittenLegacyFile) {
  const Imatrix m = parse_imatrix(hand_legacy(), "hand.dat");
  ASSERT_EQ(m.entries.size(), 2u);
  EXPECT_TRUE(m.legacy);
  EXPECT_EQ(m.chunk_count, 10);
  ASSERT_EQ(m.datasets.size(), 1u);
  EXPECT_EQ(m.datasets[0], "wiki.train.raw");
  // Sorted by name; E[x^2] = value / ncall.
  EXPECT_EQ(m.entries[0].name, "blk.0.attn_q.weight");
  EXPECT_EQ(m.entries[0].mean_sq(), (std::vector<double>{0.5, 0.25}));
  EXPECT_EQ(m.entries[1].name, "blk.0.ffn_down.weight");
  EXPECT_EQ(m.entries[1].mean_sq(), (std::vector<double>{1.0, 2.0, 0.5}));
  EXPECT_EQ(m.entries[1].columns, 3);
}

// A GGUF imatrix made with the plain GGUF writer, as llama-imatrix lays it out.
TEST(Imatrix, HandWrittenGgufFile) {
  GgufWriter w;
  w.set("general.type", std::string("imatrix"));
  w.set("imatrix.datasets", GgufArray{std::vector<std::string>{"sotu.txt"}});
  w.set("imatrix.chunk_count", uint32_t{3});
  w.set("imatrix.chunk_size", uint32_t{512});
  auto floats = [](std::vector<float> v) {
    std::vector<std::byte> b(v.size() * 4);
    std::memcpy(b.data(), v.data(), b.size());
    return b;
  };
  w.add_tensor("blk.1.ffn_up.weight.in_sum2", GgmlType::F32, {4, 1}, floats({3, 6, 9, 0}));
  w.add_tensor("blk.1.ffn_up.weight.counts", GgmlType::F32, {1, 1}, floats({1536}));
  w.add_tensor("blk.1.ffn_up.weight.in_sum", GgmlType::F32, {4, 1}, floats({1, 1, 1, 1}));
  const Imatrix m = parse_imatrix(w.to_bytes(), "hand.gguf");
  ASSERT_EQ(m.entries.size(), 1u);
  EXPECT_FALSE(m.legacy);
  EXPECT_EQ(m.chunk_count, 3);
  EXPECT_EQ(m.chunk_size, 512);
  EXPECT_EQ(m.datasets, std::vector<std::string>{"sotu.txt"});
  EXPECT_EQ(m.entries[0].columns, 4);
  EXPECT_EQ(m.entries[0].mean_sq(), (std::vector<double>{3.0 / 1536, 6.0 / 1536, 9.0 / 1536, 0.0}));

  // A model GGUF is not an importance matrix.
  GgufWriter model;
  model.set("general.architecture", std::string("llama"));
  model.add_tensor("token_embd.weight", GgmlType::F32, {4, 1}, floats({1, 2, 3, 4}));
  EXPECT_THROW(parse_imatrix(model.to_bytes(), "model.gguf"), Error);
  // Sums without counts.
  GgufWriter half;
  half.add_tensor("blk.0.attn_q.weight.in_sum2", GgmlType::F32, {4, 1}, floats({1, 2, 3, 4}));
  EXPECT_THROW(parse_imatrix(half.to_bytes(), "half.gguf"), Error);
}

// Statistics gathered the way the engine gathers them, with the expected mean x^2 computed directly.
struct Collected {
  nn::Calibration calib{nn::CalibrationOptions{false, false}};
  std::map<std::string, std::vector<double>> expected;
};
Collected collect() {
  Collected c;
  const int64_t tokens = 50;
  const std::vector<std::pair<std::vector<std::string>, int64_t>> inputs = {
      {{"blk.0.attn_q.weight", "blk.0.attn_k.weight"}, 8}, {{"blk.0.ffn_down.weight"}, 12}};
  uint64_t seed = 1;
  for (const auto& [names, cols] : inputs) {
    std::mt19937_64 rng(seed++);
    std::normal_distribution<float> gauss(0.0f, 1.0f);
    std::vector<float> x(static_cast<size_t>(tokens * cols));
    for (auto& v : x) v = gauss(rng);
    c.calib.on_linear_input(0, names, x.data(), tokens, cols);
    std::vector<double> mean(static_cast<size_t>(cols), 0.0);
    for (int64_t t = 0; t < tokens; ++t)
      for (int64_t j = 0; j < cols; ++j) mean[j] += static_cast<double>(x[t * cols + j]) * x[t * cols + j] / tokens;
    for (const auto& n : names) c.expected[n] = mean;
  }
  return c;
}

void expect_means(const Imatrix& m, const std::map<std::string, std::vector<double>>& expected) {
  ASSERT_EQ(m.entries.size(), expected.size());
  for (const auto& [name, want] : expected) {
    const ImatrixEntry* e = m.find(name);
    ASSERT_NE(e, nullptr) << name;
    const auto got = e->mean_sq();
    ASSERT_EQ(got.size(), want.size());
    for (size_t j = 0; j < want.size(); ++j) EXPECT_NEAR(got[j], want[j], 1e-6 * want[j]) << name << " " << j;
  }
}

TEST(Imatrix, RoundTripBothLayouts) {
  const Collected c = collect();
  const Imatrix m = nn::to_imatrix(c.calib, 25, "random.txt");
  EXPECT_EQ(m.chunk_count, 2);
  expect_means(m, c.expected);
  for (const char* ext : {".gguf", ".dat"}) {
    const auto path = std::filesystem::temp_directory_path() /
                      ("strata_imatrix_" + std::to_string(::getpid()) + ext);
    write_imatrix(m, path);
    const Imatrix back = read_imatrix(path);
    EXPECT_EQ(back.legacy, std::string(ext) == ".dat");
    EXPECT_EQ(back.datasets, std::vector<std::string>{"random.txt"});
    EXPECT_EQ(back.chunk_count, 2);
    expect_means(back, c.expected);
    if (back.legacy) {
      EXPECT_EQ(back.entries[0].counts[0], 2.0f);  // ncall: 50 tokens in chunks of 25
      EXPECT_EQ(imatrix_legacy_bytes(back), imatrix_legacy_bytes(read_imatrix(path)));
    }
    std::filesystem::remove(path);
  }
}

TEST(Imatrix, AppliedToACalibration) {
  Collected c = collect();
  Imatrix m = nn::to_imatrix(c.calib, 25, "");
  for (auto& e : m.entries)
    for (auto& s : e.sums) s *= 4.0f;  // four times the importance
  nn::apply_imatrix(m, c.calib);
  const Vector<double> got = c.calib.stats("blk.0.ffn_down.weight").mean_sq();
  for (int64_t j = 0; j < got.size(); ++j) EXPECT_NEAR(got[j], 4.0 * c.expected["blk.0.ffn_down.weight"][j], 1e-5 * got[j]);
  Imatrix other = m;
  other.entries[0].name = "blk.7.attn_q.weight";
  EXPECT_THROW(nn::apply_imatrix(other, c.calib), Error);
}

TEST(Imatrix, AnotherModelRefusedNamingTheTensor) {
  const Imatrix m = parse_imatrix(hand_legacy(), "hand.dat");
  const std::vector<std::pair<std::string, int64_t>> layers = {{"blk.0.attn_q.weight", 2}, {"blk.0.ffn_down.weight", 3}};
  EXPECT_NO_THROW(check_imatrix(m, layers, "hand.dat"));
  auto message = [&](const std::vector<std::pair<std::string, int64_t>>& l) {
    try {
      check_imatrix(m, l, "hand.dat");
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("accepted");
  };
  // Names differ: the first entry (in name order) without a tensor.
  EXPECT_NE(message({{"blk.0.attn_q.weight", 2}, {"blk.0.ffn_up.weight", 3}}).find("'blk.0.ffn_down.weight'"),
            std::string::npos);
  // Sizes differ.
  const std::string sized = message({{"blk.0.attn_q.weight", 576}, {"blk.0.ffn_down.weight", 3}});
  EXPECT_NE(sized.find("'blk.0.attn_q.weight'"), std::string::npos) << sized;
  EXPECT_NE(sized.find("576"), std::string::npos) << sized;
}

TEST(Imatrix, TruncatedAndForgedFilesRefused) {
  const std::vector<std::byte> full = hand_legacy();
  // Cut anywhere inside the entries: refused. (After the entries the trailer is optional.)
  const size_t entries_end = full.size() - 4 - 4 - std::string("wiki.train.raw").size();
  for (size_t n = 0; n < entries_end; ++n)
    EXPECT_THROW(parse_imatrix(std::span(full).first(n), "cut.dat"), Error) << n;
  // A dataset name cut short.
  EXPECT_THROW(parse_imatrix(std::span(full).first(full.size() - 3), "cut.dat"), Error);
  // Counts that would allocate gigabytes are refused by the bytes left.
  std::vector<std::byte> forged;
  put(forged, int32_t{0x7fffffff});
  put_name(forged, "x");
  EXPECT_THROW(parse_imatrix(forged, "forged.dat"), Error);
  forged.clear();
  put(forged, int32_t{1});
  put_name(forged, "blk.0.attn_q.weight");
  put(forged, int32_t{1});
  put(forged, int32_t{0x7fffffff});
  put(forged, 1.0f);
  EXPECT_THROW(parse_imatrix(forged, "forged.dat"), Error);
  forged = hand_legacy();
  std::memcpy(forged.data() + 4, "\xff\xff\xff\x7f", 4);  // the first name's length
  EXPECT_THROW(parse_imatrix(forged, "forged.dat"), Error);
  // A truncated GGUF imatrix.
  const Collected c = collect();
  const std::vector<std::byte> g = imatrix_gguf_bytes(nn::to_imatrix(c.calib, 25, "x"));
  EXPECT_NO_THROW(parse_imatrix(g, "ok.gguf"));
  for (size_t n : {size_t{3}, size_t{30}, g.size() / 2, g.size() - 30})  // the last: inside the last counts
    EXPECT_THROW(parse_imatrix(std::span(g).first(n), "cut.gguf"), Error) << n;
}

}  // namespace
}  // namespace strata::io
