// `strata sweep`: for one model and one calibration set, apply each method at one setting to every
// linear layer of the blocks and report size, bits per weight, perplexity and KL divergence to the
// dense model, plus each layer's output error.
#include <chrono>
#include <cstdio>
#include <fstream>
#include <memory>

#include "commands.hpp"
#include "progress.hpp"
#include "strata/compress/compressor.hpp"
#include "strata/io/model.hpp"
#include "strata/nn/calibration.hpp"
#include "strata/nn/dataset.hpp"
#include "strata/nn/eval.hpp"
#include "strata/nn/llama.hpp"
#include "strata/nn/tokenizer.hpp"
#include "strata/pipeline/pipeline.hpp"

namespace strata::cli {

namespace {

struct MethodSpec {
  std::string compressor, knob;
};

MethodSpec parse_method(const std::string& s) {
  const auto colon = s.find(':');
  require(colon != std::string::npos && colon > 0 && colon + 1 < s.size(), "method '", s,
          "': expected COMPRESSOR:KNOB, e.g. quant.gptq:bits=3,group=128");
  return {s.substr(0, colon), s.substr(colon + 1)};
}

struct LayerResult {
  std::string tensor;
  double error = 0, bytes = 0, params = 0;
};

}  // namespace

void register_sweep(CLI::App& app) {
  auto* cmd = app.add_subcommand("sweep", "Apply compression methods to every block linear layer and measure the damage");
  static std::string model, calib_text, calib_slice = "0:0.5", eval_text, eval_slice = "0.9:1.0", per_layer_out;
  static std::vector<std::string> methods;
  static int64_t sequences = 32, length = 512, eval_tokens = 4096, context = 512;
  cmd->add_option("model", model, "GGUF llama model (dense reference = its weights dequantized to float32)")
      ->required()
      ->check(CLI::ExistingFile);
  cmd->add_option("--method,-m", methods, "COMPRESSOR:KNOB, repeatable (e.g. prune.wanda:sparsity=0.5)")->required();
  cmd->add_option("--calib-text", calib_text, "calibration text")->required()->check(CLI::ExistingFile);
  cmd->add_option("--calib-slice", calib_slice)->capture_default_str();
  cmd->add_option("--sequences", sequences, "calibration sequences")->capture_default_str();
  cmd->add_option("--length", length, "tokens per calibration sequence")->capture_default_str();
  cmd->add_option("--eval-text", eval_text, "evaluation text")->required()->check(CLI::ExistingFile);
  cmd->add_option("--eval-slice", eval_slice)->capture_default_str();
  cmd->add_option("--eval-tokens", eval_tokens, "tokens to score")->capture_default_str();
  cmd->add_option("--context", context, "evaluation window (stride = window)")->capture_default_str();
  cmd->add_option("--per-layer", per_layer_out, "write every layer's error and size to this CSV file");
  cmd->callback([] {
    std::vector<MethodSpec> specs;
    for (const auto& m : methods) {
      specs.push_back(parse_method(m));
      compress::find_compressor(specs.back().compressor);  // fail early on a typo
    }
    const pipeline::Model m = pipeline::Model::load(model, /*need_tokenizer=*/true);
    const nn::LlamaModel& dense = *m.dense;
    const nn::BpeTokenizer& tok = *m.tokenizer;
    const nn::TextSlice cs = nn::TextSlice::parse(calib_text, calib_slice);
    const nn::TextSlice es = nn::TextSlice::parse(eval_text, eval_slice);
    require(!cs.overlaps(es), "calibration (", cs.describe(), ") and evaluation (", es.describe(), ") overlap");
    std::printf("model:       %s\ncalibration: %s, %lld x %lld tokens\nevaluation:  %s, %lld tokens, window %lld\n",
                model.c_str(), cs.describe().c_str(), static_cast<long long>(sequences),
                static_cast<long long>(length), es.describe().c_str(), static_cast<long long>(eval_tokens),
                static_cast<long long>(context));
    const pipeline::Calibration calibration = pipeline::calibrate(m, cs, {sequences, length, {}}, stage_bars());
    pipeline::LayerBank bank(m, &calibration.stats, 0);  // nothing cached: each form is used once
    const auto eval = nn::tokenize_slice(tok, es, eval_tokens);
    const nn::WindowOptions w{context, context, 0};

    // Block linear layers only: the tied embedding / output head is left dense.
    std::vector<std::string> targets;
    for (const auto& n : dense.linear_names())
      if (n.rfind("blk.", 0) == 0) targets.push_back(n);
    double dense_bytes = 0, params = 0;
    for (const auto& n : targets) {
      dense_bytes += static_cast<double>(dense.linear(n).weight_bytes());
      params += static_cast<double>(dense.linear(n).in_features() * dense.linear(n).out_features());
    }

    std::ofstream csv;
    if (!per_layer_out.empty()) {
      csv.open(per_layer_out);
      require(static_cast<bool>(csv), per_layer_out, ": cannot write");
      csv << "method,tensor,bytes,params,output_error\n";
    }
    struct Row {
      std::string method;
      double bytes, bpw, ppl, kl, p99, top1, mean_err, max_err;
    };
    std::vector<Row> rows;
    const auto ref = nn::perplexity(dense, eval, w);
    rows.push_back({"dense f32", dense_bytes, 32.0, ref.perplexity, 0, 0, 1, 0, 0});

    for (const auto& spec : specs) {
      const compress::WeightCompressor& c = compress::find_compressor(spec.compressor);
      nn::LlamaModel variant = dense.clone();
      std::vector<LayerResult> layers;
      double bytes = 0;
      Progress bar(spec.compressor + ":" + spec.knob, static_cast<int64_t>(targets.size()));
      for (const auto& name : targets) {
        const RowMatrix<float> wt = dense.linear(name).dense_weight();
        const auto comp = bank.compressed(name, spec.compressor, spec.knob);
        const double err = compress::output_error(wt, c.reconstruct(*comp), bank.calibration(name).hessian);
        variant.set_linear(name, c.to_linear(*comp));
        layers.push_back({name, err, static_cast<double>(comp->stored_bytes()), static_cast<double>(wt.size())});
        bytes += static_cast<double>(comp->stored_bytes());
        bar.update(static_cast<int64_t>(layers.size()));
      }
      const auto kl = nn::kl_divergence(dense, variant, eval, w);
      double sum_err = 0, max_err = 0;
      for (const auto& l : layers) {
        sum_err += l.error;
        max_err = std::max(max_err, l.error);
        if (csv) csv << spec.compressor << ':' << spec.knob << ',' << l.tensor << ',' << l.bytes << ',' << l.params
                     << ',' << l.error << '\n';
      }
      rows.push_back({spec.compressor + ":" + spec.knob, bytes, 8.0 * bytes / params, kl.model.perplexity, kl.mean_kl,
                      kl.p99_kl, kl.top1_agreement, sum_err / static_cast<double>(layers.size()), max_err});
    }

    std::printf("\n| method | MiB | bits/weight | perplexity | KL mean | KL p99 | top-1 | layer error mean | max |\n");
    std::printf("|---|---|---|---|---|---|---|---|---|\n");
    for (const auto& r : rows)
      std::printf("| %s | %.2f | %.3f | %.3f | %.5f | %.4f | %.2f%% | %.5f | %.5f |\n", r.method.c_str(),
                  r.bytes / (1024.0 * 1024.0), r.bpw, r.ppl, r.kl, r.p99, 100 * r.top1, r.mean_err, r.max_err);
    std::printf("(sizes and bits/weight count the %zu block linear layers, %.1fM parameters; the tied embedding "
                "and norms stay dense)\n",
                targets.size(), params / 1e6);
  });
}

}  // namespace strata::cli
