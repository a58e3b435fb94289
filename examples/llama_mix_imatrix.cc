// The importance vectors `strata compress` quantizes with (mean x^2 per input column of every linear
// layer, over the calibration windows it reads: --sequences x --length tokens of the calibration
// slice), written as a llama.cpp imatrix file in its legacy layout, so that llama.cpp's own quantizer
// (scripts/llama_cpp_eval.py quantize --imatrix) makes its mixes with the very same imatrix and the
// two files can be compared at equal bytes (docs/ggml-quantization.md, "llama.cpp's mixes").
//
//   llama_mix_imatrix --out FILE.dat [--model GGUF] [--calib TXT] [--calib-slice 0:0.5]
//                     [--sequences 32] [--length 512]
//
// The file is written by io::write_imatrix: llama.cpp's legacy layout for a .dat name, its GGUF
// layout otherwise (docs/imatrix-files.md).
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "real_data_args.hpp"
#include "strata/core/blas.hpp"
#include "strata/core/error.hpp"
#include "strata/io/imatrix.hpp"
#include "strata/nn/calibration.hpp"
#include "strata/pipeline/pipeline.hpp"

namespace {

using namespace strata;

void write_imatrix(const std::filesystem::path& out, const pipeline::Model& model, const nn::Calibration& stats,
                   int64_t tokens_per_sequence, const std::string& dataset) {
  io::Imatrix imatrix = nn::to_imatrix(stats, tokens_per_sequence, dataset);
  // A tied head has no tensor of its own in the file, so llama.cpp's quantizer has no use for it.
  if (model.tied_output())
    std::erase_if(imatrix.entries, [](const io::ImatrixEntry& e) { return e.name == "output.weight"; });
  require(!imatrix.entries.empty(), "no linear layer has calibration statistics");
  io::write_imatrix(imatrix, out);
  std::printf("wrote %s: %zu tensors\n", out.string().c_str(), imatrix.entries.size());
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
    write_imatrix(out, model, c.stats, a.length, c.source);
  });
}
