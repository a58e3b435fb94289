#include "strata/io/model.hpp"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <fstream>

#include "strata/io/llama2c.hpp"
#include "strata/io/mapped_file.hpp"
#include "strata/io/safetensors.hpp"
#include "test_util.hpp"

namespace strata::io {
namespace {

using ::testing::HasSubstr;

std::filesystem::path stories260k() { return testing::shared_data_dir() / "models/stories260K/stories260K.bin"; }

class TempDir {
 public:
  TempDir() {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    path_ = std::filesystem::temp_directory_path() /
            ("strata_model_" + std::to_string(::getpid()) + "_" + info->name());
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  std::filesystem::path operator/(const std::string& name) const { return path_ / name; }

 private:
  std::filesystem::path path_;
};

void write_bytes(const std::filesystem::path& p, std::span<const std::byte> bytes) {
  std::ofstream out(p, std::ios::binary);
  out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}

std::string error_of(const std::filesystem::path& p) {
  try {
    open_model(p);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(BlockIndex, FindsTheLayerNumberInCommonNamingSchemes) {
  EXPECT_EQ(block_index("blk.12.attn_q.weight"), 12);
  EXPECT_EQ(block_index("model.layers.3.mlp.up_proj.weight"), 3);
  EXPECT_EQ(block_index("encoder.layer.5.output.dense.bias"), 5);
  EXPECT_EQ(block_index("transformer.h.0.attn.c_attn.weight"), 0);
  EXPECT_EQ(block_index("layers.7"), 7);
  EXPECT_EQ(block_index("token_embd.weight"), -1);
  EXPECT_EQ(block_index("output_norm.weight"), -1);
  EXPECT_EQ(block_index("embeddings.word_embeddings.weight"), -1);
  EXPECT_EQ(block_index("blk.x.attn_q.weight"), -1);
  EXPECT_EQ(block_index("blk.3x.attn_q.weight"), -1);
  EXPECT_EQ(block_index("myblk.3.w"), -1);       // the marker must be a whole component
  EXPECT_EQ(block_index("graph.4.w"), -1);       // "h." inside "graph." does not count
  EXPECT_EQ(block_index("blk.99999999999999999999.w"), -1);  // no overflow
  EXPECT_EQ(block_index(""), -1);
}

TEST(OpenModel, Llama2cByContent) {
  STRATA_REQUIRE_FILE(stories260k(), "shared data: models/stories260K");
  const auto m = open_model(stories260k());
  EXPECT_EQ(m->format(), FileFormat::llama2c);
  EXPECT_EQ(format_name(m->format()), "llama2c");
  EXPECT_EQ(m->path(), stories260k());
  const auto blocks = m->blocks();
  ASSERT_EQ(blocks.size(), 6u);
  EXPECT_EQ(blocks[0].index, -1);
  EXPECT_EQ(blocks[0].tensors, (std::vector<std::string>{"token_embd.weight", "output_norm.weight"}));
  for (int b = 0; b < 5; ++b) {
    EXPECT_EQ(blocks[static_cast<std::size_t>(b + 1)].index, b);
    EXPECT_EQ(blocks[static_cast<std::size_t>(b + 1)].tensors.size(), 9u);
  }
  EXPECT_EQ(m->total_params(), 260032);
  EXPECT_EQ(m->total_bytes(), 260032u * 4u);
  EXPECT_DOUBLE_EQ(m->bits_per_weight(), 32.0);
  EXPECT_EQ(&m->tensor("blk.2.ffn_up.weight"), m->find("blk.2.ffn_up.weight"));
  EXPECT_THAT([&] { m->tensor("blk.5.ffn_up.weight"); },
              ::testing::ThrowsMessage<Error>(HasSubstr("no tensor named 'blk.5.ffn_up.weight'")));
}

TEST(OpenModel, SafetensorsFileIndexAndFolder) {
  TempDir dir;
  std::vector<float> v(12, 0.5f);
  const SafetensorsEntry e[] = {{"layers.0.w", "F32", Shape{3, 4}, std::as_bytes(std::span(v))},
                                {"layers.1.w", "F16", Shape{6}, std::as_bytes(std::span(v)).first(12)}};
  write_safetensors(dir / "model.safetensors", e, nullptr);
  const auto m = open_model(dir / "model.safetensors");
  EXPECT_EQ(m->format(), FileFormat::safetensors);
  EXPECT_EQ(m->total_bytes(), 60u);
  EXPECT_EQ(m->total_params(), 18);
  EXPECT_NEAR(m->bits_per_weight(), 8.0 * 60 / 18, 1e-12);
  EXPECT_EQ(m->blocks().size(), 2u);  // no tensors outside blocks: no empty group

  EXPECT_EQ(open_model(dir / "")->tensors().size(), 2u);  // a folder holding model.safetensors

  std::ofstream(dir / "model.safetensors.index.json") << R"({"weight_map":{"layers.0.w":"model.safetensors","layers.1.w":"model.safetensors"}})";
  const auto sharded = open_model(dir / "model.safetensors.index.json");
  EXPECT_EQ(sharded->tensors().size(), 2u);
  EXPECT_EQ(open_model(dir / "")->path().filename(), "model.safetensors.index.json");
}

TEST(OpenModel, GgufByMagic) {
  const auto path = testing::models_dir() / "smollm2-135m-instruct-q4_1.gguf";
  STRATA_REQUIRE_FILE(path, "run scripts/fetch-models.sh");
  const auto m = open_model(path);
  EXPECT_EQ(m->format(), FileFormat::gguf);
  EXPECT_EQ(m->config().n_layers, 30);
  EXPECT_EQ(m->blocks().size(), 31u);
  EXPECT_GT(m->bits_per_weight(), 4.5);
  EXPECT_LT(m->bits_per_weight(), 6.0);
}

TEST(OpenModel, SafetensorsMiniLM) {
  const auto path = testing::models_dir() / "all-minilm-l6-v2" / "model.safetensors";
  STRATA_REQUIRE_FILE(path, "run scripts/fetch-models.sh");
  const auto m = open_model(path);
  EXPECT_EQ(m->format(), FileFormat::safetensors);
  EXPECT_EQ(m->config().architecture, "bert");
  EXPECT_EQ(m->tensors().size(), 104u);
}

TEST(OpenModel, RejectsWhatIsNoModelNamingTheFile) {
  TempDir dir;
  write_bytes(dir / "empty.bin", {});
  EXPECT_THAT(error_of(dir / "empty.bin"), HasSubstr("empty.bin: not a GGUF, safetensors or llama2.c"));
  const std::string text = "hello, this is not a model file at all, only some text";
  write_bytes(dir / "text.bin", std::as_bytes(std::span(text)));
  EXPECT_THAT(error_of(dir / "text.bin"), HasSubstr("not a GGUF, safetensors or llama2.c"));
  EXPECT_THAT(error_of(dir / "missing.bin"), HasSubstr("missing.bin: no such file"));
  EXPECT_THAT(error_of(dir / ""), HasSubstr("a folder without model.safetensors"));
  std::ofstream(dir / "config.json") << R"({"hidden_size":4})";
  EXPECT_THAT(error_of(dir / "config.json"), HasSubstr("no 'weight_map'"));
}

TEST(OpenModel, DamagedFilesOfEachFormatFail) {
  STRATA_REQUIRE_FILE(stories260k(), "shared data: models/stories260K");
  TempDir dir;
  MappedFile f(stories260k());
  write_bytes(dir / "cut.bin", f.bytes().first(f.size() - 100));
  EXPECT_THAT(error_of(dir / "cut.bin"), HasSubstr("looks like a llama2.c checkpoint"));
  EXPECT_THAT(error_of(dir / "cut.bin"), HasSubstr("(truncated)"));

  std::vector<float> v(4, 1.0f);
  const SafetensorsEntry e{"w", "F32", Shape{4}, std::as_bytes(std::span(v))};
  write_safetensors(dir / "ok.safetensors", std::span(&e, 1), nullptr);
  MappedFile st(dir / "ok.safetensors");
  write_bytes(dir / "cut.safetensors", st.bytes().first(st.size() - 1));
  EXPECT_THAT(error_of(dir / "cut.safetensors"), HasSubstr("tensor 'w': data_offsets"));
  write_bytes(dir / "header_cut.safetensors", st.bytes().first(20));
  EXPECT_THAT(error_of(dir / "header_cut.safetensors"), HasSubstr("header_cut.safetensors: header length"));

  const std::string gguf = "GGUF\x03\0\0\0";
  write_bytes(dir / "cut.gguf", std::as_bytes(std::span(gguf)));
  EXPECT_THAT(error_of(dir / "cut.gguf"), HasSubstr("cut.gguf"));
}

}  // namespace
}  // namespace strata::io
