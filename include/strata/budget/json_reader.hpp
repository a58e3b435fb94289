#pragma once
// A read-only cursor over parsed JSON for strata's own file formats (plans, candidate tables,
// recipes): every accessor checks the type, and every error names the source and the field's
// path, e.g. "recipe.json: rules[2].min_bits: expected a number, got a string". Unknown keys are
// errors too (allow_only), so a misspelt field fails instead of being silently ignored.
#include <cstdint>
#include <filesystem>
#include <initializer_list>
#include <optional>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "strata/core/error.hpp"

namespace strata::budget {

class JsonReader {
 public:
  // `source` names the document (a file name, "plan", "preset 'gguf'"); `path` the value inside it.
  JsonReader(const nlohmann::json& value, std::string source, std::string path = {});

  const nlohmann::json& value() const { return *value_; }
  const std::string& source() const { return source_; }
  const std::string& path() const { return path_; }
  // "source: path" (or just the source at the root).
  std::string where() const;

  // Objects. at() throws naming the key when it is absent; find() returns nullopt instead (a
  // JSON null counts as absent for find()).
  void require_object() const;
  bool has(std::string_view key) const;
  JsonReader at(std::string_view key) const;
  std::optional<JsonReader> find(std::string_view key) const;
  // Throws naming the first key not in `keys`, listing the allowed ones.
  void allow_only(std::initializer_list<std::string_view> keys) const;

  // Arrays.
  size_t size() const;  // throws unless an array
  JsonReader operator[](size_t i) const;

  bool is_null() const { return value_->is_null(); }
  std::string as_string() const;
  std::string as_nonempty_string() const;
  double as_number() const;                // finite
  double as_nonnegative_number() const;    // finite and >= 0
  int64_t as_int() const;                  // an integral number within int64
  uint64_t as_uint() const;                // an integral number >= 0 within uint64
  bool as_bool() const;

  // Throws strata::Error "where(): parts...".
  template <class... Parts>
  [[noreturn]] void fail(Parts&&... parts) const {
    strata::fail(where(), ": ", std::forward<Parts>(parts)...);
  }

 private:
  const nlohmann::json* value_;
  std::string source_, path_;
};

// Parses `text` as JSON, throwing strata::Error naming `source` and the parser's position.
nlohmann::json parse_json(std::string_view text, std::string_view source);
// Reads and parses a whole file, throwing strata::Error naming the file.
nlohmann::json read_json_file(const std::filesystem::path& path);

}  // namespace strata::budget
