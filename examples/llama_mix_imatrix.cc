// The importance vectors `strata compress` quantizes with (mean x^2 per input column of every linear
// layer, over the calibration windows it reads: --sequences x --length tokens of the calibration
// slice), written as a llama.cpp imatrix file in its legacy layout, so that llama.cpp's own quantizer
// (scripts/llama_cpp_eval.py quantize --imatrix) makes its mixes with the very same imatrix and the
// two files can be compared at equal bytes (docs/ggml-quantization.md, "llama.cpp's mixes").
//
//   llama_mix_imatrix --out FILE.dat [--model GGUF] [--calib TXT] [--calib-slice 0:0.5]
//                     [--sequences 32] [--length 512]
//
// Legacy layout, little-endian: int32 entry count; per entry int32 name length, the name, int32 call
// count, int32 value count, float32 values (sums of x^2 over the calls, divided by the call count on
// reading); then int32 the last call and the dataset name (int32 length, bytes). One call per entry
// here, so the values are the means themselves.
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "real_data_args.hpp"
#include "strata/core/blas.hpp"
#include "strata/core/error.hpp"
#include "strata/pipeline/pipeline.hpp"

namespace {

using namespace strata;

void write_imatrix(const std::filesystem::path& out, const pipeline::Model& model, const nn::Calibration& stats,
                   const std::string& dataset) {
  std::vector<std::string> names;
  for (const auto& n : model.dense->linear_names())
    if ((n != "output.weight" || !model.tied_output()) && stats.has(n)) names.push_back(n);
  require(!names.empty(), "no linear layer has calibration statistics");
  const std::filesystem::path tmp = out.string() + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary);
    require(static_cast<bool>(f), tmp.string(), ": cannot write");
    auto i32 = [&](int64_t v) {
      const auto x = static_cast<int32_t>(v);
      f.write(reinterpret_cast<const char*>(&x), 4);
    };
    i32(static_cast<int64_t>(names.size()));
    for (const auto& n : names) {
      const Vector<double> ms = stats.stats(n).mean_sq();
      i32(static_cast<int64_t>(n.size()));
      f.write(n.data(), static_cast<std::streamsize>(n.size()));
      i32(1);
      i32(ms.size());
      for (int64_t j = 0; j < ms.size(); ++j) {
        const auto v = static_cast<float>(ms[j]);
        f.write(reinterpret_cast<const char*>(&v), 4);
      }
    }
    i32(1);
    i32(static_cast<int64_t>(dataset.size()));
    f.write(dataset.data(), static_cast<std::streamsize>(dataset.size()));
    require(static_cast<bool>(f), tmp.string(), ": write failed");
  }
  std::filesystem::rename(tmp, out);
  std::printf("wrote %s: %zu tensors\n", out.string().c_str(), names.size());
}

}  // namespace

int main(int argc, char** argv) {
  strata::ensure_fast_blas(argc, argv);
  CLI::App app{"strata's calibration importance (mean x^2) as a llama.cpp imatrix file", "llama_mix_imatrix"};
  strata::examples::RealDataArgs a;
  std::filesystem::path out;
  app.add_option("--model", a.model, "GGUF llama model with its tokenizer")->check(CLI::ExistingFile)->capture_default_str();
  app.add_option("--calib", a.calib, "calibration text")->check(CLI::ExistingFile)->capture_default_str();
  app.add_option("--calib-slice", a.calib_slice, "calibration slice BEGIN:END")->capture_default_str();
  app.add_option("--sequences", a.sequences, "calibration sequences")->check(CLI::PositiveNumber)->capture_default_str();
  app.add_option("--length", a.length, "tokens per sequence")->check(CLI::PositiveNumber)->capture_default_str();
  app.add_option("--out", out, "imatrix file to write (.dat)")->required();
  return strata::examples::run_main(app, argc, argv, [&] {
    const auto dir = out.parent_path().empty() ? std::filesystem::path(".") : out.parent_path();
    strata::require(std::filesystem::is_directory(dir), "--out ", out.string(), ": directory ", dir.string(),
                    " does not exist");
    const nn::TextSlice slice = nn::TextSlice::parse(a.calib, a.calib_slice);
    const pipeline::Model model = pipeline::Model::load(a.model, /*need_tokenizer=*/true);
    const pipeline::Calibration c = pipeline::calibrate(model, slice, {a.sequences, a.length, {}});
    std::printf("calibration: %s (%.0f s)\n", c.source.c_str(), c.seconds);
    write_imatrix(out, model, c.stats, c.source);
  });
}
