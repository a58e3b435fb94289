#include "strata/budget/json_reader.hpp"

#include <cmath>
#include <fstream>
#include <limits>
#include <sstream>

namespace strata::budget {

namespace {

std::string_view type_of(const nlohmann::json& j) {
  switch (j.type()) {
    case nlohmann::json::value_t::null: return "null";
    case nlohmann::json::value_t::object: return "an object";
    case nlohmann::json::value_t::array: return "an array";
    case nlohmann::json::value_t::string: return "a string";
    case nlohmann::json::value_t::boolean: return "a boolean";
    case nlohmann::json::value_t::number_integer:
    case nlohmann::json::value_t::number_unsigned: return "an integer";
    case nlohmann::json::value_t::number_float: return "a number";
    default: return "an unsupported value";
  }
}

}  // namespace

JsonReader::JsonReader(const nlohmann::json& value, std::string source, std::string path)
    : value_(&value), source_(std::move(source)), path_(std::move(path)) {}

std::string JsonReader::where() const { return path_.empty() ? source_ : source_ + ": " + path_; }

void JsonReader::require_object() const {
  if (!value_->is_object()) fail("expected an object, got ", type_of(*value_));
}

bool JsonReader::has(std::string_view key) const {
  require_object();
  auto it = value_->find(key);
  return it != value_->end() && !it->is_null();
}

JsonReader JsonReader::at(std::string_view key) const {
  require_object();
  auto it = value_->find(key);
  const std::string child = path_.empty() ? std::string(key) : path_ + "." + std::string(key);
  if (it == value_->end()) strata::fail(source_, ": ", child, ": missing");
  return JsonReader(*it, source_, child);
}

std::optional<JsonReader> JsonReader::find(std::string_view key) const {
  if (!has(key)) return std::nullopt;
  return at(key);
}

void JsonReader::allow_only(std::initializer_list<std::string_view> keys) const {
  require_object();
  for (const auto& [key, v] : value_->items()) {
    bool known = false;
    for (std::string_view k : keys) known = known || k == key;
    if (known) continue;
    std::ostringstream list;
    for (std::string_view k : keys) list << ' ' << k;
    const std::string child = path_.empty() ? key : path_ + "." + key;
    strata::fail(source_, ": ", child, ": unknown key '", key, "' (known:", list.str(), ")");
  }
}

size_t JsonReader::size() const {
  if (!value_->is_array()) fail("expected an array, got ", type_of(*value_));
  return value_->size();
}

JsonReader JsonReader::operator[](size_t i) const {
  require(i < size(), where(), ": index ", i, " out of range");
  return JsonReader((*value_)[i], source_, path_ + "[" + std::to_string(i) + "]");
}

std::string JsonReader::as_string() const {
  if (!value_->is_string()) fail("expected a string, got ", type_of(*value_));
  return value_->get<std::string>();
}

std::string JsonReader::as_nonempty_string() const {
  std::string s = as_string();
  if (s.empty()) fail("must not be empty");
  return s;
}

double JsonReader::as_number() const {
  if (!value_->is_number()) fail("expected a number, got ", type_of(*value_));
  const double v = value_->get<double>();
  if (!std::isfinite(v)) fail("must be finite, got ", v);
  return v;
}

double JsonReader::as_nonnegative_number() const {
  const double v = as_number();
  if (v < 0) fail("must be >= 0, got ", v);
  return v;
}

int64_t JsonReader::as_int() const {
  // nlohmann counts unsigned values as integers too: test for them first.
  if (value_->is_number_unsigned()) {
    const uint64_t u = value_->get<uint64_t>();
    if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) fail("integer ", u, " is too large");
    return static_cast<int64_t>(u);
  }
  if (value_->is_number_integer()) return value_->get<int64_t>();
  if (value_->is_number_float()) {
    const double v = value_->get<double>();
    // 2^63 is the first double past int64's range.
    if (std::isfinite(v) && v == std::floor(v) && std::abs(v) < 9223372036854775808.0) return static_cast<int64_t>(v);
    fail("expected an integer, got ", v);
  }
  fail("expected an integer, got ", type_of(*value_));
}

uint64_t JsonReader::as_uint() const {
  if (value_->is_number_unsigned()) return value_->get<uint64_t>();
  const int64_t v = as_int();
  if (v < 0) fail("must be >= 0, got ", v);
  return static_cast<uint64_t>(v);
}

bool JsonReader::as_bool() const {
  if (!value_->is_boolean()) fail("expected true or false, got ", type_of(*value_));
  return value_->get<bool>();
}

nlohmann::json parse_json(std::string_view text, std::string_view source) {
  try {
    return nlohmann::json::parse(text.begin(), text.end());
  } catch (const nlohmann::json::parse_error& e) {
    fail(source, ": invalid JSON: ", e.what());
  }
}

nlohmann::json read_json_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  require(in.good(), path.string(), ": cannot open");
  std::ostringstream text;
  text << in.rdbuf();
  require(!in.bad(), path.string(), ": read failed");
  return parse_json(text.str(), path.string());
}

}  // namespace strata::budget
