#pragma once
// The main job of strata as library stages an engine can call one by one, each passing a value to
// the next:
//
//   Model --calibrate--> Calibration --measure--> budget::Table --plan--> budget::Plan
//         --compressed_layers--> compress::LayerMap --write--> file
//                                            \--apply--> nn::LlamaModel --evaluate--> Evaluation
//
// Every stage is callable alone: an engine may bring its own calibration statistics (any
// nn::Calibration), its own candidate table or its own plan. Each takes its options struct and an
// optional progress callback. `strata compress`, `strata plan` and `strata sweep` are thin callers.
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <tuple>
#include <utility>
#include <vector>

#include "strata/budget/allocator.hpp"
#include "strata/budget/recipe.hpp"
#include "strata/compress/compressor.hpp"
#include "strata/compress/model_io.hpp"
#include "strata/io/model.hpp"
#include "strata/nn/calibration.hpp"
#include "strata/nn/dataset.hpp"
#include "strata/nn/eval.hpp"
#include "strata/nn/llama.hpp"
#include "strata/nn/tokenizer.hpp"

namespace strata::pipeline {

// Called by long stages as they go: which stage, how much is done of how much.
using Progress = std::function<void(std::string_view stage, int64_t done, int64_t total)>;

// The model being compressed: its file, the float32 reference model the engine runs, and its
// tokenizer when the file has one (GGUF llama models do; llama2.c checkpoints do not).
struct Model {
  std::filesystem::path path;
  std::shared_ptr<const io::Model> file;
  std::unique_ptr<nn::LlamaModel> dense;
  std::unique_ptr<nn::BpeTokenizer> tokenizer;

  // Throws strata::Error naming the file when it is not a llama model, or has no tokenizer and
  // `need_tokenizer` is set. The reference model runs the file's tensors in their stored form
  // (nn::LlamaModel::load_stored): ggml blocks as blocks, F32 straight from the memory-mapped file, so
  // the model costs about the memory of the file and one larger than memory loads.
  static Model load(const std::filesystem::path& path, bool need_tokenizer = false);
  // The output head is the token embedding itself (no output.weight tensor in the file).
  bool tied_output() const;
  // [rows, cols] of a tensor the pipeline compresses: a linear layer's weight or the token embedding.
  std::pair<int64_t, int64_t> weight_shape(std::string_view tensor) const;
  // The dense float32 weight of such a tensor (a copy).
  RowMatrix<float> weight(std::string_view tensor) const;
  const nn::BpeTokenizer& need_tokenizer() const;  // throws naming the file when there is none
};

// ---- calibrate ----

struct CalibrateOptions {
  int64_t sequences = 32, length = 512;  // token windows read from a text slice
  nn::CalibrationOptions statistics;
};

struct Calibration {
  nn::Calibration stats;
  std::vector<std::vector<int32_t>> sequences;  // the token windows the statistics came from
  std::string source;                           // "sotu_1790-2021.txt bytes ..., 32 x 512 tokens"
  double seconds = 0;
};

// Runs the dense model over `sequences` and collects the statistics every compressor needs.
Calibration calibrate(const Model& model, std::vector<std::vector<int32_t>> sequences,
                      const CalibrateOptions& options = {}, const Progress& progress = {});
// The first options.sequences windows of options.length tokens of a text slice.
Calibration calibrate(const Model& model, const nn::TextSlice& text, const CalibrateOptions& options = {},
                      const Progress& progress = {});

// ---- the layers a recipe covers, and their compressed forms ----

// The tensors a recipe covers (first matching rule, not skipped), with their parameter counts, in
// the model's order (the token embedding first).
std::vector<std::pair<std::string, int64_t>> covered_tensors(const Model& model, const budget::Recipe& recipe);

// The knob a request becomes for a tensor with `cols` columns: llama.cpp's fallback for ggml types
// whose rows are not whole super-blocks ("q3_k" on 576 columns -> "iq4_nl"); other knobs unchanged.
std::string effective_knob(std::string_view method, std::string_view knob, int64_t cols);

// "q3_k" (a ggml type) or "METHOD:KNOB" -> {method, knob}; throws naming the request for an unknown
// compressor or a ggml type strata cannot write.
std::pair<std::string, std::string> parse_request(std::string_view request);
// A llama.cpp file type spelled as llama-quantize spells it ("Q3_K_M", "Q4_0"; see
// compress/ggml/llama_mix.hpp): the request means llama-quantize's per-tensor mix of that type.
// Lowercase names ("q3_k") stay uniform ggml types. Throws for IQ4_XS, which strata cannot write.
bool is_llama_mix(std::string_view request);
// Checks a request of either kind (a mix name or what parse_request accepts) without a model.
void check_request(std::string_view request);

// Compressed forms of the model's layers on demand, made from the dense weights and the calibration
// each layer sees. The candidate table, the solvers' plans, the sensitivities and the evolutionary
// search ask for the same (tensor, method, knob) many times, and applying a compressor is the
// expensive part, so recent forms are kept, up to a byte limit (least recently used dropped first).
// Nothing float32 is cached beyond the dense model itself.
class LayerBank {
 public:
  // `calibration` may be null: compressors that need statistics then refuse, naming the tensor.
  LayerBank(const Model& model, const nn::Calibration* calibration, uint64_t cache_bytes = uint64_t{256} << 20);

  const Model& model() const { return model_; }
  // Statistics of the tensor's input; empty (all null) for the embedding or without calibration.
  // The pointers stay valid until the next call for another input.
  compress::LayerCalibration calibration(std::string_view tensor) { return calibration(tensor, true); }
  // Without `with_hessian` the Hessian is not formed (lc.hessian stays null): compressors that do not
  // need it (needs_hessian() false) are applied without paying for it.
  compress::LayerCalibration calibration(std::string_view tensor, bool with_hessian);
  // The compressed form (cached).
  std::shared_ptr<const compress::Compressed> compressed(const std::string& tensor, const std::string& method,
                                                         const std::string& knob);
  // The compressed form as the engine runs it: a linear layer, or for the token embedding the table
  // and (for a tied output head) the head reading it. Cached with the form, so that the models of
  // several plans choosing the same option share one layer object (a variant pass then runs it as
  // one product) and applying a plan copies no weights.
  std::shared_ptr<const nn::Linear> linear(const std::string& tensor, const std::string& method,
                                           const std::string& knob);
  std::pair<std::shared_ptr<const nn::Embedding>, std::shared_ptr<const nn::Linear>> embedding(
      const std::string& tensor, const std::string& method, const std::string& knob);
  uint64_t cached_bytes() const { return cached_bytes_; }
  void clear() {
    cache_.clear();
    cached_bytes_ = 0;
  }

 private:
  using Key = std::tuple<std::string, std::string, std::string>;
  struct Entry {
    std::shared_ptr<const compress::Compressed> value;
    std::shared_ptr<const nn::Linear> linear;        // made on first use
    std::shared_ptr<const nn::Embedding> embedding;  // made on first use, with its head
    std::shared_ptr<const nn::Linear> head;
    uint64_t bytes = 0, last_use = 0;
  };
  Entry* entry(const std::string& tensor, const std::string& method, const std::string& knob);
  // Drops the least recently used entries other than `keep` until `extra` more bytes fit the limit.
  void make_room(uint64_t extra, const Entry* keep);
  const Model& model_;
  const nn::Calibration* calibration_;
  uint64_t cache_limit_, cached_bytes_ = 0, clock_ = 0;
  std::map<Key, Entry> cache_;
  Entry uncached_;  // the last form too large for the cache
  // The Hessian of the last input asked for: q/k/v (and gate/up) share theirs, asked in a row.
  const nn::InputStats* stats_for_ = nullptr;
  const nn::InputStats* hessian_for_ = nullptr;
  Matrix<double> hessian_;
  Vector<double> mean_sq_, mean_abs_;
};

// ---- measure: the candidate table ----

struct MeasureOptions {
  // Overrides the recipe's error_mode when set: "output", "weight" or "kl".
  std::string error_mode;
};

// Every option the recipe allows for every covered tensor, with its exact cost and its relative
// output error on the calibration inputs (compressors with an exact curve from one factorization,
// such as SVD-LLM's spectrum, give all their knobs at once). With error_mode "kl", run
// weigh_by_kl() on the result before solving.
budget::Table measure(const Model& model, const budget::Recipe& recipe, LayerBank& bank,
                      const MeasureOptions& options = {}, const Progress& progress = {});

// The smallest total cost under `metric` any plan of the recipe can have, from the compressors'
// exact costs alone (no compression, no weights read): an impossible budget is refused before
// anything expensive runs.
double cheapest_cost(const Model& model, const budget::Recipe& recipe, budget::Metric metric);

// Turns each layer's relative output errors into estimates of the KL divergence the layer alone adds
// to the whole model, measured on `probe` (running only the blocks from the changed one onward, on
// cached hidden states): per layer and per kind of option (compressor), the worst option's KL, and
// every option of that kind scaled by KL / error. Per kind, because the errors of a rank cut, a
// sparsity pattern and a rounding grid map to KL differently; and a kind's factors do not depend on
// which other kinds the menu holds. The layers whose change starts at the same block are judged in
// one variant pass (nn::KlEvaluator::mean_kl of several models). Returns per layer the largest KL / error.
std::vector<double> weigh_by_kl(budget::Table& table, LayerBank& bank, const nn::KlEvaluator& probe,
                                const Progress& progress = {});

// ---- plan ----

// What the plan must fit: at most one of these; none means the recipe's own budget.
struct BudgetRequest {
  std::optional<double> bits_per_weight, bytes;
  std::string like;  // the size of one uniform request: "q3_k" or "METHOD:KNOB"
};
// Checks a request against the recipe without measuring anything (an unknown --like request, two
// budgets at once, or a budget below cheapest_cost are refused here, naming what is wrong).
void check_budget(const Model& model, const budget::Recipe& recipe, const BudgetRequest& request);
budget::Constraint resolve_budget(const Model& model, const budget::Recipe& recipe, const budget::Table& table,
                                  const BudgetRequest& request);

// The plan that gives every layer the same request (with llama.cpp's fallbacks and its q6_k / q8_0
// output head for ggml types), as llama-quantize does for one type: the baseline a user compares
// against. For a llama.cpp file type ("Q3_K_M", is_llama_mix), llama-quantize's own mix instead:
// llama_mix_plan(). Throws naming the tensor when its table has no such option.
budget::Plan uniform_plan(const Model& model, const budget::Table& table, std::string_view request);
// llama-quantize's per-tensor types for `file_type` ("Q3_K_M") on this model, quantized with the
// imatrix (quant.ggml; llama.cpp's rules that depend on an imatrix take it as given), with the table's
// cost and predicted error where the table has the option, else the exact cost and no predicted
// error (0): a recipe whose menu leaves out a type the mix uses still gets the mix. A tensor the mix
// does not quantize must be pinned in the table (one option), else it is refused naming it.
budget::Plan llama_mix_plan(const Model& model, const budget::Table& table, std::string_view file_type);
// The mix's type per tensor of the model (token embedding and linear layers, the model's order), as
// lowercase ggml type names ("q4_k"): what llama-quantize writes for `file_type`.
std::vector<std::pair<std::string, std::string>> llama_mix_types(const Model& model, std::string_view file_type,
                                                                 bool has_imatrix = true);

struct PlanOptions {
  std::string solver = "greedy";         // uniform, greedy, dp, minimax, error
  std::optional<double> max_error;       // solver "error": the cap on the total predicted error
  bool evolve = false;                   // refine on measured KL (needs a probe)
  // With a probe and a menu of several kinds (bits, sparsity, rank): also solve each kind's menu
  // alone and keep whichever plan measures best, so a wider menu never loses to a narrower one.
  bool guard = true;
  budget::EvolveOptions evolve_options;  // from Recipe::evolve_options()
  static PlanOptions from(const budget::Recipe& recipe);
  void check() const;  // throws for an unknown solver, or "error" without max_error
};

// For a table whose menu mixes compressors: per compressor, the table with only that compressor's
// options (layers it cannot serve keep theirs), when a plan of it can meet the constraint.
std::vector<std::pair<std::string, budget::Table>> single_kind_menus(const budget::Table& table,
                                                                     const budget::Constraint& constraint);

struct PlanResult {
  budget::Plan plan;
  std::optional<budget::EvolveResult> evolved;
  std::string start_solver;                               // the plan the search started from
  std::vector<std::pair<std::string, double>> probe_kl;  // the solvers' plans as measured on the probe
};

// Solves the table's Pareto front for the constraint. With a probe: the guard (options.guard) measures
// the plan against the plans of each single kind's menu and keeps the best; with options.evolve, the
// best of those and of the other per-layer-error solvers is refined by the evolutionary search.
PlanResult plan(const budget::Table& table, const budget::Constraint& constraint, const PlanOptions& options,
                LayerBank& bank, const nn::KlEvaluator* probe = nullptr, const Progress& progress = {});

// ---- apply, write ----

// The dense model with every layer of the plan replaced by its compressed form (a tied output head
// follows a compressed embedding).
nn::LlamaModel apply(const budget::Plan& plan, LayerBank& bank);
// The plan's compressed forms, ready to write.
compress::LayerMap compressed_layers(const budget::Plan& plan, LayerBank& bank, const Progress& progress = {});

struct Written {
  std::filesystem::path path;
  uint64_t file_bytes = 0, tensor_bytes = 0, overhead_bytes = 0;
  int file_type = -1;  // llama.cpp's general.file_type for GGUF; -1 for safetensors
};
// .gguf (ggml types only, for llama.cpp; needs a GGUF source) or .safetensors (any compressed form),
// written to a temporary file and renamed. `plan` is stored in the file's metadata.
Written write(const Model& model, const compress::LayerMap& layers, const std::filesystem::path& out,
              const budget::Plan& plan);
// Throws when `out`'s extension is neither, or the layers cannot be held by that format, naming
// the tensor and method: callers check before any work with check_output().
void check_output(const Model& model, const budget::Recipe& recipe, const std::filesystem::path& out);

// ---- bounded memory: block by block ----

// measure() and compressed_layers() for a model whose statistics do not fit in memory together: the
// calibration windows' hidden states are carried from block to block (one [tokens, dim] matrix per
// window), and each step collects the statistics of `blocks_per_step` blocks only, measures or
// compresses their tensors, and drops them. Peak memory: the hidden states, one step's statistics,
// the table or the compressed layers, and the model (which Model::load keeps in the page cache:
// its layers read the memory-mapped file). Tensors outside the blocks (the token embedding, an
// untied output head) are measured on their own statistics in the first and last steps.
struct StreamOptions {
  int blocks_per_step = 1;
  // compressed_layers_by_blocks: carry the hidden states through the compressed blocks (GPTQ's
  // sequential mode: each block is compressed for the inputs the compressed model gives it) instead
  // of the dense ones.
  bool sequential = false;
  MeasureOptions measure;
};
budget::Table measure_by_blocks(const Model& model, const budget::Recipe& recipe,
                                const std::vector<std::vector<int32_t>>& sequences, const StreamOptions& options = {},
                                const Progress& progress = {});
compress::LayerMap compressed_layers_by_blocks(const Model& model, const budget::Plan& plan,
                                               const std::vector<std::vector<int32_t>>& sequences,
                                               const StreamOptions& options = {}, const Progress& progress = {});

// ---- evaluate ----

struct Variant {
  std::string label;  // "allocated (greedy)", "uniform q3_k", "allocated at the size of q3_k"
  budget::Plan plan;
  nn::KlResult result;
  double bytes = 0, bits_per_weight = 0;
};

struct EvaluateOptions {
  std::vector<std::string> compare;  // uniform requests: each measured with an allocation of its size
  std::string solver = "greedy";     // solves the allocations of the comparison points
};

struct Evaluation {
  std::vector<Variant> variants;  // the plan first; then per compare request: uniform, allocated
  std::vector<std::string> notes;  // comparison points that could not be built, and why
  double dense_perplexity = 0;
  // The plan's model as it ran: each form of layer (the start of nn::Linear::describe(), e.g.
  // "ggml Q4_K", "sparse 2:4", "dense f32") with how many layers and weight bytes it has.
  std::map<std::string, std::pair<int64_t, uint64_t>> plan_forms;
};

// Layers of a model by form (the start of describe(), up to the shape), with their count and bytes;
// the embedding counts under its own describe().
std::map<std::string, std::pair<int64_t, uint64_t>> layer_forms(const nn::LlamaModel& model);

// The plan, and for each compare request the uniform plan and an allocated plan of its size (from
// `table`, when given), each judged against the dense model by `judge`.
Evaluation evaluate(const budget::Plan& plan, LayerBank& bank, const nn::KlEvaluator& judge,
                    const budget::Table* table = nullptr, const EvaluateOptions& options = {},
                    const Progress& progress = {});

// Each plan layer's relative output error ||(W - W') X||^2 / ||W X||^2 on other inputs than those
// it was calibrated on (the dense model run over `windows`, e.g. the evaluation text), the compressed
// layer running in its own form; NaN for the token embedding (a lookup). `layers` holds the plan's
// compressed forms (compressed_layers()). Memory: two sums per layer, no statistics.
std::vector<double> held_out_errors(const Model& model, const budget::Plan& plan, const compress::LayerMap& layers,
                                    const std::vector<std::vector<int32_t>>& windows);
// The same measurement as hooks on a dense pass the caller runs anyway over the same text (the
// judge's reference pass: nn::KlEvaluator's constructor takes hooks), read after it by errors().
class HeldOutErrors final : public nn::ForwardHooks {
 public:
  HeldOutErrors(const Model& model, const budget::Plan& plan, const compress::LayerMap& layers);
  void on_linear_input(int layer, std::span<const std::string> tensors, const float* x, int64_t tokens,
                       int64_t dim) override;
  // Per plan choice, in plan order: NaN for the token embedding or a tensor the pass did not reach.
  std::vector<double> errors() const;

 private:
  const Model& model_;
  std::vector<std::string> tensors_;  // the plan's, in order
  std::map<std::string, std::shared_ptr<const nn::Linear>, std::less<>> compressed_;
  std::map<std::string, std::pair<double, double>, std::less<>> sums_;  // ||y - y'||^2, ||y||^2
  std::vector<float> y_, y_hat_;
};

// Peak resident memory of this process so far, in bytes (0 where the system does not say).
uint64_t peak_resident_bytes();

}  // namespace strata::pipeline
