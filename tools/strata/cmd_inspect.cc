// `strata inspect FILE`: what a model file holds (format, architecture, hyper-parameters, tensors,
// totals, bits per weight), as a table or as JSON.
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "commands.hpp"
#include "strata/core/error.hpp"
#include "strata/io/model.hpp"
#include "strata/io/safetensors.hpp"

namespace strata::cli {
namespace {

struct InspectOptions {
  std::string file;
  bool json = false;
  bool no_tensors = false;
  bool metadata = false;
};

// 1234567 -> "1,234,567": parameter and byte counts of real models are unreadable without grouping.
std::string grouped(uint64_t v) {
  const std::string digits = std::to_string(v);
  std::string out;
  for (std::size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return out;
}

std::string human_bytes(uint64_t v) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double x = static_cast<double>(v);
  int u = 0;
  while (x >= 1024.0 && u < 4) {
    x /= 1024.0;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, u == 0 ? "%.0f %s" : "%.2f %s", x, units[u]);
  return buf;
}

std::string shape_json(const Shape& s) {
  std::string out = "[";
  for (int i = 0; i < s.rank(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

// Bytes on disk of everything the model was read from (all shards of a sharded checkpoint).
uint64_t file_bytes(const io::Model& m) {
  uint64_t n = 0;
  if (const auto* st = dynamic_cast<const io::SafetensorsModel*>(&m)) {
    for (const auto& p : st->shard_paths()) n += std::filesystem::file_size(p);
    return n;
  }
  return std::filesystem::file_size(m.path());
}

nlohmann::json config_json(const io::ModelConfig& c) {
  nlohmann::json j = nlohmann::json::object();
  if (!c.architecture.empty()) j["architecture"] = c.architecture;
  if (!c.name.empty()) j["name"] = c.name;
  auto put = [&](const char* k, auto v) {
    if (v != 0) j[k] = v;
  };
  put("n_layers", c.n_layers);
  put("dim", c.dim);
  put("hidden_dim", c.hidden_dim);
  put("n_heads", c.n_heads);
  put("n_kv_heads", c.n_kv_heads);
  put("head_dim", c.head_dim);
  put("vocab_size", c.vocab_size);
  put("context_length", c.context_length);
  put("rope_theta", c.rope_theta);
  put("norm_eps", c.norm_eps);
  j["tied_embeddings"] = c.tied_embeddings;
  return j;
}

// Metadata for reading on a terminal: long arrays (GGUF vocabularies) shortened to a count.
nlohmann::json abbreviate(const nlohmann::json& j) {
  if (j.is_array() && j.size() > 8) {
    nlohmann::json out = nlohmann::json::array();
    for (std::size_t i = 0; i < 4; ++i) out.push_back(abbreviate(j[i]));
    out.push_back("... " + std::to_string(j.size()) + " items");
    return out;
  }
  if (j.is_object()) {
    nlohmann::json out = nlohmann::json::object();
    for (const auto& [k, v] : j.items()) out[k] = abbreviate(v);
    return out;
  }
  if (j.is_string() && j.get_ref<const std::string&>().size() > 200)
    return j.get_ref<const std::string&>().substr(0, 200) + "... (" +
           std::to_string(j.get_ref<const std::string&>().size()) + " chars)";
  return j;
}

struct TypeTotals {
  uint64_t tensors = 0, params = 0, bytes = 0;
};

void run_inspect(const InspectOptions& opt) {
  std::unique_ptr<io::Model> model;
  try {
    model = io::open_model(opt.file);
  } catch (const Error& e) {
    // Every message the user sees starts with the file, whichever reader produced it.
    const std::string msg = e.what();
    if (msg.rfind(opt.file, 0) == 0) throw;
    fail(opt.file, ": ", msg);
  }
  const io::Model& m = *model;
  const auto blocks = m.blocks();
  const int64_t n_blocks = std::count_if(blocks.begin(), blocks.end(), [](const io::Block& b) { return b.index >= 0; });
  std::map<std::string, TypeTotals> by_type;
  for (const auto& t : m.tensors()) {
    auto& tt = by_type[t.type];
    ++tt.tensors;
    tt.params += static_cast<uint64_t>(t.numel());
    tt.bytes += t.nbytes;
  }
  const uint64_t on_disk = file_bytes(m);
  const int64_t params = m.total_params();
  const double file_bpw = params > 0 ? 8.0 * static_cast<double>(on_disk) / static_cast<double>(params) : 0.0;

  if (opt.json) {
    nlohmann::json j;
    j["file"] = opt.file;
    j["format"] = std::string(io::format_name(m.format()));
    j["config"] = config_json(m.config());
    if (!opt.no_tensors) {
      j["tensors"] = nlohmann::json::array();
      for (const auto& t : m.tensors()) {
        nlohmann::json e = {{"name", t.name}, {"shape", t.shape.dims()}, {"type", t.type},
                            {"offset", t.offset}, {"bytes", t.nbytes}, {"block", io::block_index(t.name)}};
        if (t.shard) e["shard"] = t.shard;
        j["tensors"].push_back(std::move(e));
      }
    }
    j["types"] = nlohmann::json::object();
    for (const auto& [type, tt] : by_type)
      j["types"][type] = {{"tensors", tt.tensors}, {"parameters", tt.params}, {"bytes", tt.bytes}};
    j["totals"] = {{"tensors", m.tensors().size()},
                   {"parameters", params},
                   {"bytes", m.total_bytes()},
                   {"file_bytes", on_disk},
                   {"blocks", n_blocks},
                   {"bits_per_weight", m.bits_per_weight()},
                   {"file_bits_per_weight", file_bpw}};
    if (opt.metadata) j["metadata"] = m.metadata();
    std::printf("%s\n", j.dump(2, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
    return;
  }

  const auto& c = m.config();
  std::printf("file:          %s\n", opt.file.c_str());
  std::printf("format:        %s\n", std::string(io::format_name(m.format())).c_str());
  std::printf("architecture:  %s\n", c.architecture.empty() ? "(not stated)" : c.architecture.c_str());
  if (!c.name.empty()) std::printf("name:          %s\n", c.name.c_str());
  std::string hp;
  auto add = [&](const char* k, double v, const char* fmt) {
    if (v == 0) return;
    char buf[64];
    std::snprintf(buf, sizeof buf, fmt, v);
    hp += (hp.empty() ? "" : ", ") + std::string(k) + " " + buf;
  };
  add("layers", static_cast<double>(c.n_layers), "%.0f");
  add("dim", static_cast<double>(c.dim), "%.0f");
  add("hidden", static_cast<double>(c.hidden_dim), "%.0f");
  add("heads", static_cast<double>(c.n_heads), "%.0f");
  add("kv heads", static_cast<double>(c.n_kv_heads), "%.0f");
  add("head dim", static_cast<double>(c.head_dim), "%.0f");
  add("vocab", static_cast<double>(c.vocab_size), "%.0f");
  add("context", static_cast<double>(c.context_length), "%.0f");
  add("rope theta", c.rope_theta, "%g");
  add("norm eps", c.norm_eps, "%g");
  if (!hp.empty()) hp += std::string(", tied embeddings ") + (c.tied_embeddings ? "yes" : "no");
  std::printf("hyper-params:  %s\n", hp.empty() ? "(not stated)" : hp.c_str());

  if (!opt.no_tensors) {
    std::size_t wn = 4, ws = 5, wt = 4;
    for (const auto& t : m.tensors()) {
      wn = std::max(wn, t.name.size());
      ws = std::max(ws, shape_json(t.shape).size());
      wt = std::max(wt, t.type.size());
    }
    std::printf("\n%-*s  %-*s  %-*s  %14s\n", static_cast<int>(wn), "name", static_cast<int>(ws), "shape",
                static_cast<int>(wt), "type", "bytes");
    for (const auto& t : m.tensors())
      std::printf("%-*s  %-*s  %-*s  %14s\n", static_cast<int>(wn), t.name.c_str(), static_cast<int>(ws),
                  shape_json(t.shape).c_str(), static_cast<int>(wt), t.type.c_str(), grouped(t.nbytes).c_str());
  }

  std::printf("\n");
  for (const auto& [type, tt] : by_type)
    std::printf("type %-8s %5s tensors  %15s parameters  %15s bytes  %6.2f bits/weight\n", type.c_str(),
                grouped(tt.tensors).c_str(), grouped(tt.params).c_str(), grouped(tt.bytes).c_str(),
                tt.params ? 8.0 * static_cast<double>(tt.bytes) / static_cast<double>(tt.params) : 0.0);
  std::printf("totals: %s tensors in %lld blocks, %s parameters, %s bytes of tensor data (%s)\n",
              grouped(m.tensors().size()).c_str(), static_cast<long long>(n_blocks),
              grouped(static_cast<uint64_t>(params)).c_str(), grouped(m.total_bytes()).c_str(),
              human_bytes(m.total_bytes()).c_str());
  std::printf("bits per weight: %.3f (tensor data), %.3f (whole file, %s bytes)\n", m.bits_per_weight(), file_bpw,
              grouped(on_disk).c_str());
  if (opt.metadata) {
    std::printf("\nmetadata:\n%s\n",
                abbreviate(m.metadata()).dump(2, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
  }
}

}  // namespace

void register_inspect(CLI::App& app) {
  auto opt = std::make_shared<InspectOptions>();
  auto* cmd = app.add_subcommand("inspect", "Show a model file's format, architecture, tensors and bits per weight");
  cmd->add_option("file", opt->file,
                  "GGUF, safetensors (or model.safetensors.index.json, or a folder) or llama2.c file")
      ->required();
  cmd->add_flag("--json", opt->json, "Print JSON instead of a table");
  cmd->add_flag("--no-tensors", opt->no_tensors, "Leave out the per-tensor table");
  cmd->add_flag("--metadata", opt->metadata,
                "Also print the file's metadata (long arrays shortened in the table view)");
  cmd->callback([opt] { run_inspect(*opt); });
}

}  // namespace strata::cli
