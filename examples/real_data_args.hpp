#pragma once
// Options every real-model evaluation example shares: which model, which calibration and evaluation
// text (and which slices of them), and how much of each. Defaults: SmolLM2-135M, SOTU 0:0.5 for
// calibration, Moby-Dick 0.9:1.0 for evaluation, found from the source tree.
#include <cstdint>
#include <filesystem>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

namespace strata::examples {

struct RealDataArgs {
  std::filesystem::path model = std::filesystem::path(STRATA_SOURCE_DIR) / "models/smollm2-135m-instruct-q4_1.gguf";
  std::filesystem::path calib = std::filesystem::path(STRATA_SOURCE_DIR) / "../shared/data/corpora/sotu_1790-2021.txt";
  std::filesystem::path eval = std::filesystem::path(STRATA_SOURCE_DIR) / "../shared/data/corpora/moby_dick.txt";
  std::string calib_slice = "0:0.5", eval_slice = "0.9:1.0";
  int64_t sequences = 32, length = 512, eval_tokens = 4096;

  // Takes `key` (reading its value through `value`) when it is one of the shared options.
  bool parse_shared(const std::string& key, const std::function<std::string()>& value) {
    if (key == "--model") model = value();
    else if (key == "--calib") calib = value();
    else if (key == "--calib-slice") calib_slice = value();
    else if (key == "--sequences") sequences = std::stoll(value());
    else if (key == "--length") length = std::stoll(value());
    else if (key == "--eval") eval = value();
    else if (key == "--eval-slice") eval_slice = value();
    else if (key == "--eval-tokens") eval_tokens = std::stoll(value());
    else return false;
    return true;
  }
};

// "a,b,,c" -> {"a", "b", "c"}.
inline std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  for (std::string part; std::getline(ss, part, sep);)
    if (!part.empty()) out.push_back(part);
  return out;
}

}  // namespace strata::examples
