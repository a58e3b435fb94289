#pragma once
// How far KV-cache eviction moves a model, as stages an engine can call one at a time (`strata kv-eval`
// is option parsing and printing around them):
//   evaluate_decode   windows of text: the first P tokens are read and the cache compressed to the
//                     budget, then the next D tokens are read one at a time with the cache held at the
//                     budget; each step's next-token distribution is compared with the full cache's
//                     (KL(full || compressed), perplexity, top-1 agreement).
//   evaluate_needle   a fact sentence inserted at several depths of a haystack, a question at the end
//                     (the model's chat template), the greedy answer checked by string match.
//   layer_errors      each layer's relative attention-output error when only that layer is
//                     compressed (AttentionProbe).
// Every stage reads each prompt once per scorer and forks that session for every policy and budget
// (Session::fork), so a fork is bit for bit the session that read the prompt under its eviction.
// Budgets are fractions of a base length (the prompt, or the needle's haystack), in tokens per KV head.
// "allocated" takes each layer's budget from strata's budget allocator over per-layer sensitivities
// measured on calibration text (AllocationTables, kv/allocate.hpp).
// Stages return plain structs; they print nothing and write no files. A Progress callback, when set,
// is called with (done, total) units of work after each one.
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <tuple>
#include <vector>

#include "strata/kv/allocate.hpp"
#include "strata/kv/policy.hpp"
#include "strata/kv/session.hpp"
#include "strata/nn/llama.hpp"

namespace strata::io {
class Model;
}
namespace strata::nn {
class BpeTokenizer;
}

namespace strata::kv {

using Progress = std::function<void(int64_t done, int64_t total)>;

// How a configuration spreads its budget over layers and heads (kv/policy.hpp).
enum class Budgeting { uniform, pyramid, adakv, allocated };
// "uniform", "pyramid", "adakv", "allocated"; strata::Error naming the value otherwise.
Budgeting parse_budgeting(std::string_view name);
std::string_view budgeting_name(Budgeting b);

// One evaluated configuration: a scorer (make_scorer's names) and a budgeting rule, or StreamingLLM
// (no scorer; the rule is unused).
struct EvalConfig {
  std::string scorer;  // empty: StreamingLLM
  Budgeting budgeting = Budgeting::uniform;
  double recent_share = 0;  // the policy's recent_share
  bool show_share = false;  // label() names the share (when several are compared)

  bool streaming() const { return scorer.empty(); }
  // "snapkv/adakv", "snapkv/adakv w75%" (show_share), "streaming-llm".
  std::string label() const;
};

// StreamingLLM first, then every scorer x share x rule, grouped by scorer (one prompt pass each).
// Scorer and share values are checked here (strata::Error naming the bad one).
std::vector<EvalConfig> eval_configs(std::span<const std::string> scorers, std::span<const Budgeting> rules,
                                     std::span<const double> recent_shares);

// The settings every configuration shares.
struct EvictionSettings {
  int64_t sinks = 4, recent = 16;  // protected tokens of every head
  double pyramid_beta = 20, adakv_floor = 0.2;
  // "allocated": probe tokens after the calibration prompt, and the budgets (fractions of the prompt)
  // each layer's sensitivity is measured at.
  int64_t probe = 16;
  std::vector<double> allocation_grid = {0.03, 0.05, 0.075, 0.1, 0.125, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.75};
};

// Per-layer sensitivity tables for "allocated", one per (scorer, prompt length, recent share),
// measured on calibration tokens when first asked for and kept.
class AllocationTables {
 public:
  AllocationTables(const nn::LlamaModel& model, std::vector<int32_t> calibration, EvictionSettings settings);
  // strata::Error when the calibration tokens are fewer than prompt + settings.probe.
  const budget::Table& table(const std::string& scorer, int64_t prompt, double recent_share);
  const EvictionSettings& settings() const { return settings_; }

 private:
  const nn::LlamaModel& model_;
  std::vector<int32_t> calibration_;
  EvictionSettings settings_;
  std::map<std::pair<std::string, int64_t>, std::unique_ptr<AttentionProbe>> probes_;
  std::map<std::tuple<std::string, int64_t, double>, std::unique_ptr<budget::Table>> tables_;
};

// The policy within a layer: per-head selection with the settings' protected tokens and `recent_share`.
Policy within_layer_policy(const EvictionSettings& settings, double recent_share);
// The policy of `config` at `budget` tokens per KV head for prompts of `prompt` tokens. "allocated"
// needs `tables` (strata::Error without them).
Policy eval_policy(const EvalConfig& config, int64_t budget, int64_t prompt, const EvictionSettings& settings,
                   AllocationTables* tables);

// Reads `prompt` once per scorer of `configs` (evicting nothing), forks that session for each of the
// scorer's configs and each budget (fractions of `base` tokens), compresses the fork and hands it to
// `visit` with the prompt's last logits (over the full cache, as a session that compresses after its
// prefill computes them). Configs of one scorer must be adjacent (eval_configs groups them).
// `full`, when set, is then handed the first group's parent session, which evicts nothing: the full
// cache, without a prompt pass of its own.
using ForkVisitor =
    std::function<void(const EvalConfig& config, double fraction, Session& fork, std::span<const float> logits)>;
using FullVisitor = std::function<void(Session& full, std::span<const float> logits)>;
void for_each_fork(const nn::LlamaModel& model, std::span<const int32_t> prompt, int64_t max_tokens,
                   std::span<const EvalConfig> configs, std::span<const double> fractions, int64_t base,
                   const Schedule& schedule, const EvictionSettings& settings, AllocationTables* tables,
                   const ForkVisitor& visit, const FullVisitor& full = {});

// ---- decode-time KL, perplexity, top-1 ----

struct DecodeOptions {
  int64_t prefill = 2000;  // prompt tokens of each window; the rest are read one at a time
  std::vector<double> budgets = {0.1, 0.2, 0.5};  // fractions of the prompt
  Schedule schedule{.prefill = true, .decode = true, .every = 1};
  EvictionSettings eviction;
};

struct DecodeRow {
  EvalConfig config;
  double budget = 0;   // fraction of the prompt
  int64_t tokens = 0;  // per KV head
  // Sums over every scored position of every window.
  double kl = 0, nll = 0;
  int64_t top1 = 0, count = 0;
  std::vector<double> window_kl;  // mean KL of each window

  double mean_kl() const { return kl / static_cast<double>(count); }
  double perplexity() const;
  double top1_rate() const { return static_cast<double>(top1) / static_cast<double>(count); }
};

struct DecodeResult {
  int64_t windows = 0, prefill = 0;
  double full_nll = 0;  // the full cache's, summed over the same positions
  int64_t count = 0;    // scored positions
  std::vector<DecodeRow> rows;  // config-major, budgets in the options' order

  double full_perplexity() const;
  // strata::Error when there is no such row.
  const DecodeRow& row(const std::string& label, double budget) const;
};

// Each window: tokens [0, prefill) are the prompt, each of the others is read one at a time and
// predicts the next (so a window of n tokens scores n - prefill - 1 positions). Progress counts forks
// (windows x configs x budgets).
DecodeResult evaluate_decode(const nn::LlamaModel& model, std::span<const std::vector<int32_t>> windows,
                             std::span<const EvalConfig> configs, const DecodeOptions& options,
                             AllocationTables* tables = nullptr, const Progress& progress = {});

// `count` consecutive windows of `length` tokens from the start of `tokens` (strata::Error when short).
std::vector<std::vector<int32_t>> split_windows(std::span<const int32_t> tokens, int64_t length, int64_t count);

// ---- decode-time compression over a long generation ----

// A short prompt, then a long output read one token at a time by the full cache and by a session per
// configuration that compresses while generating, every `every` steps (Schedule{prefill, decode,
// every}: between compressions the new tokens wait in a buffer of up to every - 1 tokens above the
// budget), as an engine runs it. All sessions read the same tokens in lock step: those the full cache
// samples (temperature, seeded; EOS is not special), or the sequence's own tokens (sample = false).
// Each step's KL(full || compressed) and top-1 agreement are summed; the tokens each head holds are
// averaged over steps. Threshold rows (Policy::thresholded, one per scored config and threshold) keep
// what scores above the threshold; their ceiling is the whole sequence, so what they hold is theirs.
struct GenerationOptions {
  int64_t prompt = 64;    // tokens of each sequence read as the prompt (compressed after it, if over)
  int64_t steps = 2048;   // tokens generated after it
  std::vector<double> budgets = {0.1};  // fractions of prompt + steps, tokens per KV head
  std::vector<double> thresholds;       // threshold rows, per scored config
  int64_t every = 8;
  bool sample = true;
  double temperature = 1.0;
  uint64_t seed = 1;
  EvictionSettings eviction;
};

struct GenerationRow {
  EvalConfig config;
  double budget = 0;                  // fraction; 0 for a threshold row
  std::optional<double> threshold;
  int64_t tokens = 0;                 // budget in tokens per KV head (threshold rows: the ceiling)
  double kl = 0, held = 0;            // sums over steps (held: mean tokens per KV head after the step)
  int64_t top1 = 0, count = 0, max_held = 0;
  std::vector<double> sequence_kl;    // mean KL of each sequence

  // "tova/uniform" or "tova/uniform t>0.002".
  std::string label() const;
  double mean_kl() const { return kl / static_cast<double>(count); }
  double mean_held() const { return held / static_cast<double>(count); }
  double top1_rate() const { return static_cast<double>(top1) / static_cast<double>(count); }
};

struct GenerationResult {
  int64_t sequences = 0, length = 0;  // length = prompt + steps
  std::vector<GenerationRow> rows;    // budget rows config-major, then threshold rows
  std::vector<std::vector<int32_t>> tokens;  // each sequence as read (prompt and output)
  // strata::Error when there is no such row.
  const GenerationRow& row(const std::string& label, double budget) const;
};

// An "allocated" config takes its layer budgets from `tables` measured on calibration prompts of
// prompt + steps tokens (each layer's attention error when it alone is compressed after such a
// prompt): the generation's whole length, which is what the budget is a fraction of. The tables'
// settings must be the options' eviction settings.
// strata::Error (naming the setting) for an empty prompt, no steps, every < 1, a temperature <= 0, a
// sequence shorter than prompt (sample) or prompt + steps (not), or an "allocated" config without
// tables. Progress counts steps over all sequences.
GenerationResult evaluate_generation(const nn::LlamaModel& model, std::span<const std::vector<int32_t>> sequences,
                                     std::span<const EvalConfig> configs, const GenerationOptions& options,
                                     AllocationTables* tables = nullptr, const Progress& progress = {});

// ---- needle in a haystack ----

// How the model wants a user turn: ChatML when the chat template writes <|im_start|> (with the
// template's literal default system message, when it has one, as an unedited chat would get it);
// plain text with "\n\nAnswer:" after it otherwise.
struct ChatFormat {
  std::string before, after;
};
ChatFormat chat_format(std::string_view chat_template);
ChatFormat chat_format(const io::Model& file);  // its tokenizer.chat_template ("" when absent)

struct NeedleText {
  std::string prompt;
  double depth = 0;  // where the needle went, as a fraction of the haystack's characters
};
// The haystack with `needle` inserted after the first sentence end (". ") at or after `depth` of its
// characters (the end when there is none), then a blank line and the question, inside `chat`.
NeedleText insert_needle(std::string_view haystack, double depth, std::string_view needle, std::string_view question,
                         const ChatFormat& chat);

struct NeedlePrompt {
  std::vector<int32_t> tokens;
  double depth = 0;
};
// insert_needle on the decoded haystack at each depth (in [0, 1]; strata::Error otherwise), encoded
// with the chat template's special tokens.
std::vector<NeedlePrompt> needle_prompts(const nn::BpeTokenizer& tok, const ChatFormat& chat,
                                         std::span<const int32_t> haystack, std::span<const double> depths,
                                         std::string_view needle, std::string_view question);

// Greedy continuation of `session`, which has read a prompt whose last logits are `logits`: at most
// `max_tokens`, stopping at EOS or <|im_end|>; decoded without special tokens.
std::string greedy_answer(Session& session, const nn::BpeTokenizer& tok, std::vector<float> logits,
                          int64_t max_tokens);

struct NeedleOptions {
  std::vector<double> budgets = {0.2};  // fractions of the haystack
  std::string answer = "4721";          // a correct answer contains this
  int64_t answer_tokens = 20;
  bool decode = false;  // also hold the budget while answering (default: compress the prompt once)
  EvictionSettings eviction;
};

struct NeedleAnswer {
  std::string label;  // "full cache" or a config's label
  double budget = 0;  // 1 for the full cache
  double depth = 0;
  std::string answer;
  bool correct = false;
};

struct NeedleResult {
  int64_t haystack_tokens = 0;
  std::vector<NeedleAnswer> answers;  // per prompt: the full cache, then every config x budget
  // '1' or '0' per depth, in prompt order.
  std::string per_depth(const std::string& label, double budget) const;
  double accuracy(const std::string& label, double budget) const;  // strata::Error when never asked
};

// Every prompt answered with the full cache and under every config and budget. Progress counts
// prompts.
NeedleResult evaluate_needle(const nn::LlamaModel& model, const nn::BpeTokenizer& tok,
                             std::span<const NeedlePrompt> prompts, int64_t haystack_tokens,
                             std::span<const EvalConfig> configs, const NeedleOptions& options,
                             AllocationTables* tables = nullptr, const Progress& progress = {});

// ---- per-layer attention-output error ----

struct LayerErrorOptions {
  double budget = 0.2;  // fraction of the prompt
  EvictionSettings eviction;
};

struct LayerErrorColumn {
  std::string label;
  std::vector<double> errors;  // per layer
  double mean() const;
  int64_t worst_layer() const;
};

struct LayerErrorResult {
  int64_t tokens = 0;  // budget per KV head
  std::vector<LayerErrorColumn> columns;  // in the configs' order
};

// AttentionProbe::errors of every config, `probe` being the tokens that follow `prompt`: one probe
// pass per scorer (StreamingLLM reuses any). Progress counts probe passes.
LayerErrorResult layer_errors(const nn::LlamaModel& model, std::span<const int32_t> prompt,
                              std::span<const int32_t> probe, std::span<const EvalConfig> configs,
                              const LayerErrorOptions& options, AllocationTables* tables = nullptr,
                              const Progress& progress = {});

}  // namespace strata::kv
