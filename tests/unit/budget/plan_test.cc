// Plans and candidate tables as JSON: exact round trips, atomic files, errors naming the field.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <unistd.h>

#include "strata/budget/allocator.hpp"
#include "strata/budget/json_reader.hpp"
#include "strata/core/error.hpp"

namespace strata::budget {
namespace {

Table sample_table() {
  Table t;
  t.layers.push_back({"blk.0.attn_q.weight", 331776,
                      {{"quant.ggml", "q4_k", {186624, 331776, 663552}, 0.0123456789012345},
                       {"quant.ggml", "q8_0", {352512, 331776, 663552}, 1.0 / 3.0},
                       {"prune.sparsegpt", "pattern=2:4", {373248, 165888, 331776}, 0.1}}});
  t.layers.push_back({"token_embd.weight", 28311552, {{"quant.ggml", "q8_0", {30081024, 28311552, 0}, 0}}});
  return t;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

struct TempDir {
  std::filesystem::path path;
  TempDir() {
    path = std::filesystem::temp_directory_path() / ("strata_plan_test_" + std::to_string(::getpid()));
    std::filesystem::create_directories(path);
  }
  ~TempDir() { std::filesystem::remove_all(path); }
};

TEST(PlanJson, RoundTripIsExact) {
  const Table t = sample_table();
  Plan p = solve(t, bits_per_weight(t, 8.6), Solver::greedy);
  p.choices[0].measured_error = 0.0125;
  const Plan q = Plan::from_json(p.to_json());
  EXPECT_EQ(q.solver, "greedy");
  EXPECT_EQ(q.constraint.metric, Metric::bytes);
  EXPECT_EQ(q.constraint.budget, p.constraint.budget);
  EXPECT_FALSE(q.max_error.has_value());
  ASSERT_EQ(q.choices.size(), 2u);
  for (size_t i = 0; i < 2; ++i) {
    EXPECT_EQ(q.choices[i].tensor, p.choices[i].tensor);
    EXPECT_EQ(q.choices[i].method, p.choices[i].method);
    EXPECT_EQ(q.choices[i].knob, p.choices[i].knob);
    EXPECT_EQ(q.choices[i].cost.bytes, p.choices[i].cost.bytes);
    EXPECT_EQ(q.choices[i].cost.params, p.choices[i].cost.params);
    EXPECT_EQ(q.choices[i].cost.flops, p.choices[i].cost.flops);
    EXPECT_EQ(q.choices[i].predicted_error, p.choices[i].predicted_error);
  }
  EXPECT_EQ(q.choices[0].measured_error, 0.0125);
  EXPECT_TRUE(std::isnan(q.choices[1].measured_error));
  EXPECT_TRUE(p.to_json()["choices"][1]["measured_error"].is_null());
  EXPECT_EQ(q.to_json(), p.to_json());
  // The written totals are for readers; they match what loading recomputes.
  EXPECT_EQ(p.to_json()["total_cost"]["bytes"].get<double>(), q.total_cost().bytes);

  const Plan e = solve_error_constrained(t, Metric::params, 0.5);
  const Plan e2 = Plan::from_json(e.to_json());
  ASSERT_TRUE(e2.max_error.has_value());
  EXPECT_EQ(*e2.max_error, 0.5);
  EXPECT_EQ(e2.constraint.metric, Metric::params);
}

TEST(PlanJson, SaveIsAtomicAndLoadNamesTheFileAndField) {
  const Table t = sample_table();
  const Plan p = solve(t, bits_per_weight(t, 8.6), Solver::dp);
  TempDir dir;
  const auto path = dir.path / "plan.json";
  p.save(path);
  EXPECT_EQ(Plan::load(path).to_json(), p.to_json());
  // The file reads top-down: what it is first, the choices last.
  std::ifstream in(path);
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(text.find("{\n  \"format\": \"strata.plan\""), 0u) << text.substr(0, 80);
  EXPECT_LT(text.find("\"total_error\""), text.find("\"choices\""));
  EXPECT_LT(text.find("\"tensor\""), text.find("\"knob\""));
  // Only the finished file is left (no temporary beside it).
  int files = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir.path)) files += entry.is_regular_file();
  EXPECT_EQ(files, 1);
  // Saving into a missing folder fails and names the file.
  EXPECT_NE(error_of([&] { p.save(dir.path / "missing" / "plan.json"); }).find("plan.json"), std::string::npos);

  const auto write = [&](const nlohmann::json& j) {
    std::ofstream(path) << j.dump();
    return error_of([&] { Plan::load(path); });
  };
  nlohmann::json j = p.to_json();
  j["choices"][1]["cost"]["bytes"] = "many";
  std::string msg = write(j);
  EXPECT_NE(msg.find(path.string() + ": choices[1].cost.bytes: expected a number, got a string"), std::string::npos)
      << msg;
  j = p.to_json();
  j["choices"][0].erase("knob");
  EXPECT_NE(write(j).find("choices[0].knob: missing"), std::string::npos) << write(j);
  j = p.to_json();
  j["choices"][0]["knobb"] = "q4_k";
  EXPECT_NE(write(j).find("choices[0].knobb: unknown key 'knobb'"), std::string::npos) << write(j);
  j = p.to_json();
  j["choices"][1]["tensor"] = j["choices"][0]["tensor"];
  EXPECT_NE(write(j).find("choices[1].tensor: tensor 'blk.0.attn_q.weight' is chosen twice"), std::string::npos)
      << write(j);
  j = p.to_json();
  j["constraint"]["metric"] = "bits";
  EXPECT_NE(write(j).find("constraint.metric: unknown budget metric 'bits'"), std::string::npos) << write(j);
  j = p.to_json();
  j["choices"][0]["predicted_error"] = -1;
  EXPECT_NE(write(j).find("choices[0].predicted_error: must be >= 0"), std::string::npos) << write(j);
  j = p.to_json();
  j["format"] = "strata.recipe";
  EXPECT_NE(write(j).find("format: expected \"strata.plan\""), std::string::npos) << write(j);
  std::ofstream(path) << "{\"solver\": ";
  msg = error_of([&] { Plan::load(path); });
  EXPECT_NE(msg.find(path.string() + ": invalid JSON"), std::string::npos) << msg;
  EXPECT_NE(error_of([&] { Plan::load(dir.path / "absent.json"); }).find("absent.json: cannot open"),
            std::string::npos);
}

TEST(TableJson, RoundTripAndErrorsNameTheField) {
  const Table t = sample_table();
  const Table u = Table::from_json(t.to_json());
  EXPECT_EQ(u.to_json(), t.to_json());
  ASSERT_EQ(u.layers.size(), 2u);
  EXPECT_EQ(u.layers[0].options[0].error, 0.0123456789012345);
  EXPECT_EQ(u.layers[0].options[2].knob, "pattern=2:4");
  EXPECT_EQ(u.layers[1].params, 28311552);

  nlohmann::json j = t.to_json();
  j["layers"][0]["options"][1]["error"] = nullptr;
  EXPECT_NE(error_of([&] { Table::from_json(j); }).find("layers[0].options[1].error: expected a number, got null"),
            std::string::npos);
  j = t.to_json();
  j["layers"][1]["options"] = nlohmann::json::array();
  EXPECT_NE(error_of([&] { Table::from_json(j); }).find("layers[1].options: no options"), std::string::npos);
  j = t.to_json();
  j["layers"][1]["tensor"] = "blk.0.attn_q.weight";
  EXPECT_NE(error_of([&] { Table::from_json(j); }).find("appears twice"), std::string::npos);
  j = t.to_json();
  j["layers"][0]["params"] = 1.5;
  EXPECT_NE(error_of([&] { Table::from_json(j); }).find("layers[0].params: expected an integer"), std::string::npos);
  j = t.to_json();
  j["layers"][0]["options"][0]["cost"]["bits"] = 4;
  EXPECT_NE(error_of([&] { Table::from_json(j); }).find("layers[0].options[0].cost.bits: unknown key"),
            std::string::npos);
}

TEST(JsonReader, TypesPathsAndNumbers) {
  const nlohmann::json j = nlohmann::json::parse(
      R"({"a": {"b": [1, 2.5, "x", true, -3, 18446744073709551615, 1e300]}, "s": "", "n": null})");
  const JsonReader r(j, "doc");
  EXPECT_EQ(r.where(), "doc");
  const JsonReader b = r.at("a").at("b");
  EXPECT_EQ(b.where(), "doc: a.b");
  EXPECT_EQ(b.size(), 7u);
  EXPECT_EQ(b[0].as_int(), 1);
  EXPECT_EQ(b[1].as_number(), 2.5);
  EXPECT_EQ(b[2].as_string(), "x");
  EXPECT_TRUE(b[3].as_bool());
  EXPECT_EQ(b[4].as_int(), -3);
  EXPECT_EQ(b[5].as_uint(), 18446744073709551615ull);
  EXPECT_NE(error_of([&] { b[1].as_int(); }).find("doc: a.b[1]: expected an integer, got 2.5"), std::string::npos);
  EXPECT_NE(error_of([&] { b[4].as_uint(); }).find("a.b[4]: must be >= 0"), std::string::npos);
  EXPECT_NE(error_of([&] { b[4].as_nonnegative_number(); }).find("must be >= 0"), std::string::npos);
  EXPECT_NE(error_of([&] { b[5].as_int(); }).find("too large"), std::string::npos);
  EXPECT_NE(error_of([&] { b[6].as_int(); }).find("expected an integer"), std::string::npos);
  EXPECT_NE(error_of([&] { b[2].as_number(); }).find("expected a number, got a string"), std::string::npos);
  EXPECT_NE(error_of([&] { b[7]; }).find("index 7 out of range"), std::string::npos);
  EXPECT_NE(error_of([&] { r.at("s").as_nonempty_string(); }).find("doc: s: must not be empty"), std::string::npos);
  EXPECT_FALSE(r.has("n"));
  EXPECT_FALSE(r.find("n").has_value());
  EXPECT_TRUE(r.at("n").is_null());
  EXPECT_NE(error_of([&] { r.at("zz"); }).find("doc: zz: missing"), std::string::npos);
  EXPECT_NE(error_of([&] { r.allow_only({"a", "s"}); }).find("doc: n: unknown key 'n' (known: a s)"), std::string::npos);
  EXPECT_NE(error_of([&] { b.at("x"); }).find("a.b: expected an object, got an array"), std::string::npos);
  EXPECT_NE(error_of([&] { parse_json("[1,", "text"); }).find("text: invalid JSON"), std::string::npos);
}

}  // namespace
}  // namespace strata::budget
