#include "strata/io/llama2c.hpp"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <fstream>

#include "test_util.hpp"

namespace strata::io {
namespace {

using ::testing::HasSubstr;

std::filesystem::path stories260k() { return testing::shared_data_dir() / "models/stories260K/stories260K.bin"; }

std::vector<std::byte> read_all(const std::filesystem::path& p) {
  MappedFile f(p);
  return {f.bytes().begin(), f.bytes().end()};
}

std::filesystem::path temp_file(const std::string& name, std::span<const std::byte> bytes) {
  const auto p = std::filesystem::temp_directory_path() / ("strata_l2c_" + std::to_string(::getpid()) + "_" + name);
  std::ofstream out(p, std::ios::binary);
  out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  return p;
}

// A small checkpoint whose every float is its own index, so that each tensor's place can be checked.
std::vector<std::byte> synthetic(const Llama2cHeader& h) {
  const auto size = llama2c_expected_size(h);
  EXPECT_TRUE(size.problem.empty()) << size.problem;
  std::vector<std::byte> out(size.bytes);
  std::memcpy(out.data(), &h, 28);
  for (uint64_t i = 0; i < (size.bytes - 28) / 4; ++i) {
    const float v = static_cast<float>(i);
    std::memcpy(out.data() + 28 + 4 * i, &v, 4);
  }
  return out;
}

TEST(Llama2c, Stories260KShapesAndConfig) {
  STRATA_REQUIRE_FILE(stories260k(), "shared data: models/stories260K");
  Llama2cModel m(stories260k());
  const auto& c = m.config();
  EXPECT_EQ(c.architecture, "llama");
  EXPECT_EQ(c.dim, 64);
  EXPECT_EQ(c.hidden_dim, 172);
  EXPECT_EQ(c.n_layers, 5);
  EXPECT_EQ(c.n_heads, 8);
  EXPECT_EQ(c.n_kv_heads, 4);
  EXPECT_EQ(c.head_dim, 8);
  EXPECT_EQ(c.vocab_size, 512);
  EXPECT_EQ(c.context_length, 512);
  EXPECT_TRUE(c.tied_embeddings);
  EXPECT_EQ(m.metadata()["rope_layout"], "adjacent");

  ASSERT_EQ(m.tensors().size(), 1u + 9u * 5u + 1u);
  EXPECT_EQ(m.tensor("token_embd.weight").shape, (Shape{512, 64}));
  EXPECT_EQ(m.tensor("token_embd.weight").offset, 28u);
  for (int l = 0; l < 5; ++l) {
    const std::string b = "blk." + std::to_string(l) + ".";
    EXPECT_EQ(m.tensor(b + "attn_norm.weight").shape, (Shape{64}));
    EXPECT_EQ(m.tensor(b + "attn_q.weight").shape, (Shape{64, 64}));
    EXPECT_EQ(m.tensor(b + "attn_k.weight").shape, (Shape{32, 64}));
    EXPECT_EQ(m.tensor(b + "attn_v.weight").shape, (Shape{32, 64}));
    EXPECT_EQ(m.tensor(b + "attn_output.weight").shape, (Shape{64, 64}));
    EXPECT_EQ(m.tensor(b + "ffn_norm.weight").shape, (Shape{64}));
    EXPECT_EQ(m.tensor(b + "ffn_gate.weight").shape, (Shape{172, 64}));
    EXPECT_EQ(m.tensor(b + "ffn_down.weight").shape, (Shape{64, 172}));
    EXPECT_EQ(m.tensor(b + "ffn_up.weight").shape, (Shape{172, 64}));
  }
  EXPECT_EQ(m.tensor("output_norm.weight").shape, (Shape{64}));
  EXPECT_EQ(m.find("output.weight"), nullptr);
  // The legacy RoPE tables ([512][4] twice) are all that follows the last tensor.
  const auto& last = m.tensors().back();
  EXPECT_EQ(last.offset + last.nbytes + 2 * 512 * 4 * 4, 1056540u);
  EXPECT_EQ(m.total_params(), 260032);
  EXPECT_DOUBLE_EQ(m.bits_per_weight(), 32.0);

  // RMSNorm weights of a trained model are positive and O(1); a misplaced offset would not be.
  const Tensor norm = m.to_f32("output_norm.weight");
  for (int i = 0; i < 64; ++i) EXPECT_GT(norm.view<float>()(i), 0.0f);
  const auto bytes = read_all(stories260k());
  float first;
  std::memcpy(&first, bytes.data() + 28, 4);
  EXPECT_EQ(m.to_f32("token_embd.weight").view<float>()(0, 0), first);
}

TEST(Llama2c, SyntheticLayoutPlacesEveryTensor) {
  Llama2cHeader h{.dim = 8, .hidden_dim = 12, .n_layers = 2, .n_heads = 4, .n_kv_heads = 2, .vocab_size = -10, .seq_len = 3};
  const auto bytes = synthetic(h);
  const auto layout = parse_llama2c(bytes, "synthetic.bin");
  EXPECT_FALSE(layout.config.tied_embeddings);
  EXPECT_EQ(layout.config.vocab_size, 10);
  // Element index of each tensor's first float: embedding 80, rms_att 2x8, wq 2x64, wk/wv 2x32 each,
  // wo 2x64, rms_ffn 2x8, w1/w2/w3 2x96 each, rms_final 8, freq_cis 2x3x1, then the classifier.
  const std::vector<std::pair<std::string, int>> starts = {
      {"token_embd.weight", 0},     {"blk.0.attn_norm.weight", 80},    {"blk.1.attn_norm.weight", 88},
      {"blk.0.attn_q.weight", 96},  {"blk.1.attn_q.weight", 160},      {"blk.0.attn_k.weight", 224},
      {"blk.0.attn_v.weight", 288}, {"blk.1.attn_output.weight", 416}, {"blk.0.ffn_norm.weight", 480},
      {"blk.0.ffn_gate.weight", 496}, {"blk.0.ffn_down.weight", 688},  {"blk.1.ffn_up.weight", 976},
      {"output_norm.weight", 1072}, {"output.weight", 1086},
  };
  for (const auto& entry : starts) {
    const std::string& name = entry.first;
    const int start = entry.second;
    const auto it = std::find_if(layout.tensors.begin(), layout.tensors.end(), [&](const TensorInfo& t) { return t.name == name; });
    ASSERT_NE(it, layout.tensors.end()) << name;
    EXPECT_EQ(it->offset, 28u + 4u * static_cast<uint64_t>(start)) << name;
  }
  EXPECT_EQ(layout.tensors.back().shape, (Shape{10, 8}));

  const auto p = temp_file("synthetic.bin", bytes);
  Llama2cModel m(p);
  const Tensor down = m.to_f32("blk.0.ffn_down.weight");
  EXPECT_EQ(down.shape(), (Shape{8, 12}));
  EXPECT_EQ(down.view<float>()(1, 0), 688.0f + 12.0f);
  std::filesystem::remove(p);
}

TEST(Llama2c, TruncatedOrOversizedFilesAreRejected) {
  STRATA_REQUIRE_FILE(stories260k(), "shared data: models/stories260K");
  auto bytes = read_all(stories260k());
  for (std::size_t cut : {std::size_t{0}, std::size_t{27}, std::size_t{28}, bytes.size() / 2, bytes.size() - 4,
                          bytes.size() - 1}) {
    SCOPED_TRACE(cut);
    EXPECT_THROW(parse_llama2c(std::span(bytes).first(cut), "cut.bin"), Error);
  }
  const auto p = temp_file("truncated.bin", std::span(bytes).first(bytes.size() - 4));
  try {
    Llama2cModel m(p);
    FAIL() << "a truncated checkpoint was accepted";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr(p.string()));
    EXPECT_THAT(e.what(), HasSubstr("implies 1056540 bytes but the file has 1056536 (truncated)"));
  }
  std::filesystem::remove(p);
  bytes.resize(bytes.size() + 4);
  EXPECT_THAT([&] { parse_llama2c(bytes, "long.bin"); },
              ::testing::ThrowsMessage<Error>(HasSubstr("trailing data")));
}

TEST(Llama2c, ForgedHeadersAreRejected) {
  const Llama2cHeader good{.dim = 8, .hidden_dim = 12, .n_layers = 2, .n_heads = 4, .n_kv_heads = 2, .vocab_size = 10, .seq_len = 3};
  const auto base = synthetic(good);
  auto forged = [&](auto edit) {
    auto bytes = base;
    Llama2cHeader h = good;
    edit(h);
    std::memcpy(bytes.data(), &h, 28);
    try {
      parse_llama2c(bytes, "forged.bin");
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  EXPECT_THAT(forged([](auto& h) { h.dim = 0; }), HasSubstr("must be positive"));
  EXPECT_THAT(forged([](auto& h) { h.n_layers = -1; }), HasSubstr("must be positive"));
  EXPECT_THAT(forged([](auto& h) { h.n_heads = 3; }), HasSubstr("does not divide dim"));
  EXPECT_THAT(forged([](auto& h) { h.n_kv_heads = 3; }), HasSubstr("does not divide n_heads"));
  EXPECT_THAT(forged([](auto& h) { h.n_heads = 8; h.n_kv_heads = 8; }), HasSubstr("odd"));
  EXPECT_THAT(forged([](auto& h) { h.dim = 1 << 30; h.n_layers = 1 << 30; h.hidden_dim = 1 << 30; }),
              HasSubstr("overflow"));
  EXPECT_THAT(forged([](auto& h) { h.vocab_size = -10; }), HasSubstr("implies"));
  EXPECT_THAT(forged([](auto& h) { h.seq_len = 4; }), HasSubstr("forged.bin: llama2.c header"));

  // Any single bit flip in the header yields an error (the size must match exactly) or, rarely, another
  // consistent layout; never anything else.
  for (int i = 0; i < 28 * 8; ++i) {
    auto bytes = base;
    bytes[static_cast<std::size_t>(i / 8)] ^= static_cast<std::byte>(1 << (i % 8));
    try {
      const auto layout = parse_llama2c(bytes, "flip.bin");
      const auto& last = layout.tensors.back();
      EXPECT_LE(last.offset + last.nbytes, bytes.size());
    } catch (const Error&) {
    }
  }
}

}  // namespace
}  // namespace strata::io
