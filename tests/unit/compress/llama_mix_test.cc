// llama-quantize's per-tensor mixes against tables worked out by hand from llama.cpp's rules for two
// model shapes: SmolLM2-135M's (30 layers, 576-wide rows that are not whole super-blocks, 1536-wide
// ffn_down, 9 query heads on 3 KV heads, tied head) and a Llama-7B-like one (32 layers, 4096/11008,
// n_gqa 4, its own output head). test_llama_cpp checks the same tables against llama.cpp's quantizer.
#include "strata/compress/ggml/llama_mix.hpp"

#include <gtest/gtest.h>

#include <set>
#include <string>
#include <vector>

#include "strata/core/error.hpp"

namespace strata::compress::ggml {
namespace {

using T = kernels::GgmlType;

std::vector<MixTensor> model_tensors(int layers, int64_t dim, int64_t ffn, bool own_head) {
  std::vector<MixTensor> t{{"token_embd.weight", dim}};
  for (int l = 0; l < layers; ++l) {
    const std::string b = "blk." + std::to_string(l) + ".";
    for (const char* n : {"attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up"})
      t.push_back({b + n + ".weight", dim});
    t.push_back({b + "ffn_down.weight", ffn});
  }
  if (own_head) t.push_back({"output.weight", dim});
  return t;
}

struct Expect {
  T embd, q, v_default, o, gate, down_default;
  std::set<int> v_layers;  // layers whose attn_v gets v_special
  T v_special;
  std::set<int> down_layers;  // layers whose ffn_down gets down_special
  T down_special;
  T head = T::F32;  // only for models with their own head
};

void check(std::string_view type, const MixModel& m, const std::vector<MixTensor>& tensors, const Expect& e) {
  const auto ft = find_llama_file_type(type);
  ASSERT_TRUE(ft.has_value()) << type;
  const auto got = llama_mix(*ft, m, tensors);
  ASSERT_EQ(got.size(), tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    const std::string& n = tensors[i].name;
    ASSERT_TRUE(got[i].has_value()) << n;
    T want = e.q;
    int layer = -1;
    if (n.rfind("blk.", 0) == 0) layer = std::stoi(n.substr(4));
    if (n == "token_embd.weight") want = e.embd;
    else if (n == "output.weight") want = e.head;
    else if (n.find("attn_v") != std::string::npos) want = e.v_layers.count(layer) ? e.v_special : e.v_default;
    else if (n.find("attn_output") != std::string::npos) want = e.o;
    else if (n.find("ffn_down") != std::string::npos) want = e.down_layers.count(layer) ? e.down_special : e.down_default;
    else if (n.find("ffn_gate") != std::string::npos || n.find("ffn_up") != std::string::npos) want = e.gate;
    EXPECT_EQ(kernels::lower_name(*got[i]), kernels::lower_name(want)) << type << " " << n;
  }
}

const MixModel kSmol{30, 9, 3, false};
const MixModel kSmolImatrix{30, 9, 3, true};

TEST(LlamaMix, SmolLm2ShapesFallBackOnTheirNarrowRows) {
  const auto t = model_tensors(30, 576, 1536, false);
  // Q2_K: attn_v and attn_output ask Q3_K, everything 576 wide falls back to Q4_0; ffn_down gets Q3_K;
  // the tied head (576 is not whole super-blocks) Q8_0.
  check("Q2_K", kSmol, t, {T::Q8_0, T::Q4_0, T::Q4_0, T::Q4_0, T::Q4_0, T::Q3_K, {}, T::Q4_0, {}, T::Q3_K});
  check("Q3_K_S", kSmol, t, {T::Q8_0, T::Q4_0, T::Q4_0, T::Q4_0, T::Q4_0, T::Q3_K, {}, T::Q4_0, {}, T::Q3_K});
  // Q3_K_M: attn_v Q5_K (-> Q5_1) on the first two layers, Q4_K (-> Q5_0) after; ffn_down Q5_K on the
  // first 30/16 = 1 layer, Q4_K after; attn_output Q4_K -> Q5_0.
  check("Q3_K_M", kSmol, t, {T::Q8_0, T::Q4_0, T::Q5_0, T::Q5_0, T::Q4_0, T::Q4_K, {0, 1}, T::Q5_1, {0}, T::Q5_K});
  check("Q3_K_L", kSmol, t, {T::Q8_0, T::Q4_0, T::Q5_1, T::Q5_1, T::Q4_0, T::Q5_K, {}, T::Q5_1, {}, T::Q5_K});
  // use_more_bits on 30 layers: 0-2, 26-29 and 5, 8, ..., 23.
  const std::set<int> more = {0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 26, 27, 28, 29};
  check("Q4_K_M", kSmol, t, {T::Q8_0, T::Q5_0, T::Q5_0, T::Q5_0, T::Q5_0, T::Q4_K, more, T::Q8_0, more, T::Q6_K});
  check("Q5_K_M", kSmol, t, {T::Q8_0, T::Q5_1, T::Q5_1, T::Q5_1, T::Q5_1, T::Q5_K, more, T::Q8_0, more, T::Q6_K});
  // Q4_K_S: attn_v Q5_K on the first four, ffn_down Q5_K on the first 30/8 = 3.
  check("Q4_K_S", kSmol, t, {T::Q8_0, T::Q5_0, T::Q5_0, T::Q5_0, T::Q5_0, T::Q4_K, {0, 1, 2, 3}, T::Q5_1, {0, 1, 2}, T::Q5_K});
  check("Q5_K_S", kSmol, t, {T::Q8_0, T::Q5_1, T::Q5_1, T::Q5_1, T::Q5_1, T::Q5_K, {}, T::Q5_1, {}, T::Q5_K});
  check("Q6_K", kSmol, t, {T::Q8_0, T::Q8_0, T::Q8_0, T::Q8_0, T::Q8_0, T::Q6_K, {}, T::Q8_0, {}, T::Q6_K});
  check("Q8_0", kSmol, t, {T::Q8_0, T::Q8_0, T::Q8_0, T::Q8_0, T::Q8_0, T::Q8_0, {}, T::Q8_0, {}, T::Q8_0});
  check("Q4_1", kSmol, t, {T::Q8_0, T::Q4_1, T::Q4_1, T::Q4_1, T::Q4_1, T::Q4_1, {}, T::Q4_1, {}, T::Q4_1});
  check("Q5_1", kSmol, t, {T::Q8_0, T::Q5_1, T::Q5_1, T::Q5_1, T::Q5_1, T::Q5_1, {}, T::Q5_1, {}, T::Q5_1});
  // Q4_0 / Q5_0: the first eighth of ffn_down goes to Q4_1 / Q5_1 only with an imatrix.
  check("Q4_0", kSmol, t, {T::Q8_0, T::Q4_0, T::Q4_0, T::Q4_0, T::Q4_0, T::Q4_0, {}, T::Q4_0, {}, T::Q4_0});
  check("Q4_0", kSmolImatrix, t,
        {T::Q8_0, T::Q4_0, T::Q4_0, T::Q4_0, T::Q4_0, T::Q4_0, {}, T::Q4_0, {0, 1, 2}, T::Q4_1});
  check("Q5_0", kSmolImatrix, t,
        {T::Q8_0, T::Q5_0, T::Q5_0, T::Q5_0, T::Q5_0, T::Q5_0, {}, T::Q5_0, {0, 1, 2}, T::Q5_1});
  // IQ4_NL: ffn_down Q5_K on the first eighth only without an imatrix; n_gqa 3 keeps attn_v.
  check("IQ4_NL", kSmol, t,
        {T::Q8_0, T::IQ4_NL, T::IQ4_NL, T::IQ4_NL, T::IQ4_NL, T::IQ4_NL, {}, T::IQ4_NL, {0, 1, 2}, T::Q5_K});
  check("IQ4_NL", kSmolImatrix, t,
        {T::Q8_0, T::IQ4_NL, T::IQ4_NL, T::IQ4_NL, T::IQ4_NL, T::IQ4_NL, {}, T::IQ4_NL, {}, T::IQ4_NL});
}

TEST(LlamaMix, WideModelWithItsOwnHeadKeepsSuperBlocks) {
  const auto t = model_tensors(32, 4096, 11008 / 256 * 256, true);
  const MixModel m{32, 32, 8, true};  // n_gqa 4
  Expect q2{T::Q2_K, T::Q2_K, T::Q4_K, T::Q3_K, T::Q2_K, T::Q3_K, {}, T::Q4_K, {}, T::Q3_K};
  q2.head = T::Q6_K;  // an untied embedding keeps the base type; the head gets Q6_K
  check("Q2_K", m, t, q2);
  // use_more_bits on 32 layers: 0-3, 28-31 and 6, 9, ..., 27.
  const std::set<int> more = {0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31};
  Expect q4{T::Q4_K, T::Q4_K, T::Q4_K, T::Q4_K, T::Q4_K, T::Q4_K, more, T::Q6_K, more, T::Q6_K};
  q4.head = T::Q6_K;
  check("Q4_K_M", m, t, q4);
  Expect iq{T::IQ4_NL, T::IQ4_NL, T::Q5_K, T::IQ4_NL, T::IQ4_NL, T::IQ4_NL, {}, T::Q5_K, {}, T::IQ4_NL};
  iq.head = T::Q6_K;
  check("IQ4_NL", m, t, iq);
  Expect q8{T::Q8_0, T::Q8_0, T::Q8_0, T::Q8_0, T::Q8_0, T::Q8_0, {}, T::Q8_0, {}, T::Q8_0};
  q8.head = T::Q8_0;
  check("Q8_0", m, t, q8);
}

TEST(LlamaMix, NamesAreLlamaCppsSpellingAndIq4XsIsRefused) {
  EXPECT_FALSE(find_llama_file_type("q3_k_m").has_value());  // lowercase: a ggml type, not a mix
  EXPECT_FALSE(find_llama_file_type("q4_0").has_value());
  EXPECT_FALSE(find_llama_file_type("Q3_K").has_value());
  EXPECT_EQ(find_llama_file_type("Q3_K_M")->ftype, 12);
  EXPECT_EQ(find_llama_file_type("IQ4_NL")->ftype, 25);
  try {
    find_llama_file_type("IQ4_XS");
    FAIL() << "IQ4_XS accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("IQ4_XS"), std::string::npos) << e.what();
  }
}

TEST(LlamaMix, RowsThatFitNoBlockAndBadLayersAreHandled) {
  // 100 columns: neither a 256 nor a 32 multiple -> F16, as llama.cpp writes it.
  const std::vector<MixTensor> t = {{"blk.0.attn_q.weight", 100}, {"blk.0.attn_norm.weight", 100}};
  const auto got = llama_mix(*find_llama_file_type("Q4_K_M"), {2, 4, 4, false}, t);
  EXPECT_EQ(got[0], T::F16);
  EXPECT_FALSE(got[1].has_value());
  const std::vector<MixTensor> bad = {{"blk.7.ffn_down.weight", 256}};
  EXPECT_THROW(llama_mix(*find_llama_file_type("Q2_K"), {2, 4, 4, false}, bad), Error);
}

}  // namespace
}  // namespace strata::compress::ggml
