// Measured figures for docs/kv-cache.md: SmolLM2-135M's real K/V caches (every layer and KV head,
// one prefill of real text) compressed by KIVI quantization, llama.cpp's ggml cache types, MiniCache
// cross-layer merging and PCA of calibration K/V rows (per head, per layer, xKV's cross-layer
// basis), each judged by the relative error of the attention output of the last queries (all 9
// query heads of all 30 layers):
//   error = ||O - O'||_F / ||O||_F, O = softmax(q K^T / sqrt(d)) V with the exact cache, O' with the
//   compressed one, summed over layers and heads.
// Bytes per token are per KV head for its key and value (float16 = 256 for head_dim 64).
//
//   kv_quant_eval [--model GGUF] [--text TXT] [--slice 0.3:0.4] [--calib-slice 0.1:0.2] [--tokens 1024]
//                 [--queries 64] [--bits 2,4,8] [--groups 32,64,128] [--residual 0]
//                 [--no-ggml] [--no-merge] [--no-lowrank]
#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "real_data_args.hpp"
#include "strata/core/blas.hpp"
#include "strata/core/error.hpp"
#include "strata/core/parallel.hpp"
#include "strata/io/model.hpp"
#include "strata/kv/lowrank.hpp"
#include "strata/kv/merge.hpp"
#include "strata/kv/quant.hpp"
#include "strata/nn/dataset.hpp"
#include "strata/nn/hooks.hpp"
#include "strata/nn/llama.hpp"
#include "strata/nn/tokenizer.hpp"

namespace {

using namespace strata;
namespace fs = std::filesystem;
using strata::examples::seconds_since;

struct Args {
  fs::path model = examples::data_paths().smollm2();
  fs::path text = examples::data_paths().moby_dick();
  std::string slice = "0.3:0.4", calib_slice = "0.1:0.2";
  int64_t tokens = 1024, queries = 64, residual = 0;
  std::vector<int> bits = {2, 4, 8};
  std::vector<int64_t> groups = {32, 64, 128};
  bool no_ggml = false, no_merge = false, no_lowrank = false;

  void add_options(CLI::App& app) {
    examples::add_model_option(app, model);
    app.add_option("--text", text, "text the caches are computed on")->check(CLI::ExistingFile)->capture_default_str();
    app.add_option("--slice", slice, "slice BEGIN:END of --text whose caches are compressed")->capture_default_str();
    app.add_option("--calib-slice", calib_slice, "slice of --text the low-rank projections are fitted on")
        ->capture_default_str();
    app.add_option("--tokens", tokens, "tokens per cache")->check(CLI::PositiveNumber)->capture_default_str();
    app.add_option("--queries", queries, "last queries whose attention output is compared (1..--tokens)")
        ->check(CLI::PositiveNumber)
        ->capture_default_str();
    app.add_option("--residual", residual, "KIVI's full-precision recent tokens")
        ->check(CLI::NonNegativeNumber)
        ->capture_default_str();
    examples::add_list(app, "--bits", bits, "KIVI bits");
    examples::add_list(app, "--groups", groups, "KIVI group sizes");
    app.add_flag("--no-ggml", no_ggml, "skip llama.cpp's cache types");
    app.add_flag("--no-merge", no_merge, "skip MiniCache merging");
    app.add_flag("--no-lowrank", no_lowrank, "skip the low-rank projections");
  }
};

// Per layer: queries and keys after RoPE, keys before it, values; recomputed from the input the
// q/k/v projections share during one prefill from position 0.
struct Capture : nn::ForwardHooks {
  const nn::LlamaModel& model;
  std::vector<RowMatrix<float>> q, k, k_pre, v;
  explicit Capture(const nn::LlamaModel& m) : model(m) {
    const auto n = static_cast<size_t>(m.config().n_layers);
    q.resize(n), k.resize(n), k_pre.resize(n), v.resize(n);
  }
  void on_linear_input(int layer, std::span<const std::string> tensors, const float* x, int64_t tokens,
                       int64_t) override {
    if (tensors.size() != 3 || !tensors[0].ends_with("attn_q.weight")) return;
    const auto& c = model.config();
    const size_t l = static_cast<size_t>(layer);
    q[l].resize(tokens, c.n_heads * c.head_dim);
    k[l].resize(tokens, c.n_kv_heads * c.head_dim);
    v[l].resize(tokens, c.n_kv_heads * c.head_dim);
    model.layer(layer, nn::LlamaModel::kQ).forward(x, tokens, q[l].data());
    model.layer(layer, nn::LlamaModel::kK).forward(x, tokens, k[l].data());
    model.layer(layer, nn::LlamaModel::kV).forward(x, tokens, v[l].data());
    k_pre[l] = k[l];
    nn::apply_rope(q[l].data(), q[l].rows(), c.n_heads, c.head_dim, 0, c.rope_theta);
    nn::apply_rope(k[l].data(), k[l].rows(), c.n_kv_heads, c.head_dim, 0, c.rope_theta);
  }
};

Capture capture(const nn::LlamaModel& model, const std::vector<int32_t>& tokens) {
  Capture cap(model);
  nn::LlamaSession session(model, static_cast<int64_t>(tokens.size()));
  session.forward(tokens, nullptr, nn::Logits::none, &cap);
  return cap;
}

RowMatrix<float> cols(const RowMatrix<float>& m, int64_t head, int64_t hd) { return m.middleCols(head * hd, hd); }

// A compressed cache of one layer and KV head: its reconstructed keys and values, and the bytes it
// holds where that is measured.
struct Approx {
  RowMatrix<float> k, v;
  uint64_t bytes = 0;
};
struct Score {
  // Relative attention-output error with both approximations, with only the keys approximated
  // (exact values) and with only the values approximated.
  double both = 0, keys = 0, values = 0;
  uint64_t bytes = 0;
};

// Attention-output errors over the given layers (all by default), every query head; the
// approximation of (layer, kv head) comes from `approx`, called concurrently for different heads.
// The exact outputs are computed once.
class Scorer {
 public:
  Scorer(const Capture& cap, const nn::LlamaConfig& c, int64_t queries) : cap_(cap), c_(c), queries_(queries) {
    const int64_t hd = c.head_dim, group = c.n_heads / c.n_kv_heads;
    exact_.resize(static_cast<size_t>(c.n_layers * c.n_heads));
    query_.resize(exact_.size());
    parallel_for(c.n_layers * c.n_heads, 1, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        const size_t li = static_cast<size_t>(i / c.n_heads), ii = static_cast<size_t>(i);
        const int64_t h = i % c.n_heads, n = cap.k[li].rows();
        query_[ii] = cols(cap.q[li], h, hd).bottomRows(queries);
        exact_[ii] = kv::attention(query_[ii], cols(cap.k[li], h / group, hd), cols(cap.v[li], h / group, hd), n - queries);
      }
    });
  }

  Score score(const std::function<Approx(int64_t, int64_t)>& approx, std::vector<int64_t> layers = {}) const {
    if (layers.empty())
      for (int64_t l = 0; l < c_.n_layers; ++l) layers.push_back(l);
    const int64_t hd = c_.head_dim, group = c_.n_heads / c_.n_kv_heads;
    const int64_t tasks = static_cast<int64_t>(layers.size()) * c_.n_kv_heads;
    // Per task: squared errors (both, keys only, values only), squared norm, bytes.
    std::vector<std::array<double, 4>> sums(static_cast<size_t>(tasks), {0, 0, 0, 0});
    std::vector<uint64_t> bytes(static_cast<size_t>(tasks));
    // One (layer, kv head) per task: Eigen's products inside stay on their thread.
    parallel_for(tasks, 1, [&](int64_t j0, int64_t j1) {
      for (int64_t j = j0; j < j1; ++j) {
        const int64_t l = layers[static_cast<size_t>(j / c_.n_kv_heads)], kvh = j % c_.n_kv_heads;
        const size_t li = static_cast<size_t>(l), jj = static_cast<size_t>(j);
        const int64_t n = cap_.k[li].rows();
        const RowMatrix<float> k = cols(cap_.k[li], kvh, hd), v = cols(cap_.v[li], kvh, hd);
        const Approx a = approx(l, kvh);
        bytes[jj] = a.bytes;
        for (int64_t h = kvh * group; h < (kvh + 1) * group; ++h) {
          const size_t i = static_cast<size_t>(l * c_.n_heads + h);
          const RowMatrix<float>& o = exact_[i];
          sums[jj][0] += (o - kv::attention(query_[i], a.k, a.v, n - queries_)).cast<double>().squaredNorm();
          sums[jj][1] += (o - kv::attention(query_[i], a.k, v, n - queries_)).cast<double>().squaredNorm();
          sums[jj][2] += (o - kv::attention(query_[i], k, a.v, n - queries_)).cast<double>().squaredNorm();
          sums[jj][3] += o.cast<double>().squaredNorm();
        }
      }
    });
    std::array<double, 4> t = {0, 0, 0, 0};
    Score s;
    for (size_t j = 0; j < sums.size(); ++j) {
      for (size_t x = 0; x < 4; ++x) t[x] += sums[j][x];
      s.bytes += bytes[j];
    }
    s.both = std::sqrt(t[0] / t[3]);
    s.keys = std::sqrt(t[1] / t[3]);
    s.values = std::sqrt(t[2] / t[3]);
    return s;
  }

 private:
  const Capture& cap_;
  const nn::LlamaConfig& c_;
  int64_t queries_;
  std::vector<RowMatrix<float>> query_, exact_;
};

void quantization(const Args& a, const Capture& cap, const nn::LlamaConfig& c, const Scorer& scorer) {
  const int64_t hd = c.head_dim, n = a.tokens;
  std::printf("## KIVI (residual R = %lld, f16 scales and minimums)\n\n", static_cast<long long>(a.residual));
  std::printf("| bits | keys | group | attention error | keys only | values only | bytes/token (measured, %lld tokens) | bytes/token (long cache) |\n",
              static_cast<long long>(n));
  std::printf("|---|---|---|---|---|---|---|---|\n");
  for (int bits : a.bits)
    for (int64_t g : a.groups)
      for (kv::KeyMode mode : {kv::KeyMode::per_channel, kv::KeyMode::per_token}) {
        kv::KiviOptions o;
        o.key_bits = o.value_bits = bits;
        o.group = g;
        o.residual = a.residual;
        o.key_mode = mode;
        const Score s = scorer.score([&](int64_t l, int64_t kvh) {
          kv::QuantizedKV q(hd, o);
          q.append(cols(cap.k[static_cast<size_t>(l)], kvh, hd), cols(cap.v[static_cast<size_t>(l)], kvh, hd));
          return Approx{q.keys_dequantized(), q.values_dequantized(), q.bytes()};
        });
        const double heads = static_cast<double>(c.n_layers * c.n_kv_heads);
        std::printf("| %d | %s | %lld | %.4f | %.4f | %.4f | %.2f | %.2f |\n", bits, kv::to_string(mode).c_str(),
                    static_cast<long long>(g), s.both, s.keys, s.values,
                    static_cast<double>(s.bytes) / heads / static_cast<double>(n), kv::bytes_per_token(o, hd));
      }
  std::printf("\n");

  if (a.no_ggml) return;
  std::printf("## llama.cpp cache types (same type for K and V)\n\n");
  std::printf("| type | attention error | keys only | values only | bytes/token |\n|---|---|---|---|---|\n");
  for (kernels::GgmlType t : kv::ggml_cache_types()) {
    if (t == kernels::GgmlType::F32) continue;
    const Score s = scorer.score([&](int64_t l, int64_t kvh) {
      kv::BlockQuantizedKV q(hd, {t, t});
      q.append(cols(cap.k[static_cast<size_t>(l)], kvh, hd), cols(cap.v[static_cast<size_t>(l)], kvh, hd));
      return Approx{q.keys_dequantized(), q.values_dequantized(), q.bytes()};
    });
    std::printf("| %s | %.4f | %.4f | %.4f | %.0f |\n", kernels::ggml_type_name(t).data(), s.both, s.keys, s.values,
                kv::bytes_per_token(kv::GgmlCacheTypes{t, t}, hd));
  }
  std::printf("\n");
}

// The q-quantile of the values (sorted in place).
double quantile(std::vector<float>& x, double q) {
  std::sort(x.begin(), x.end());
  return x[static_cast<size_t>(q * static_cast<double>(x.size() - 1))];
}

void merging(const Capture& cap, const nn::LlamaConfig& c, const Scorer& scorer) {
  const int64_t hd = c.head_dim;
  std::printf("## MiniCache: adjacent layers (l, l+1) merged, keys and values, t = 0.5\n\n");
  // How far apart the two layers' rows of the same token and head point: Omega / pi.
  for (auto [first, last] : {std::pair<int64_t, int64_t>{c.n_layers / 2, c.n_layers}, {0, c.n_layers}}) {
    std::vector<float> dk, dv;
    for (int64_t l = first; l + 1 < last; l += 2)
      for (int64_t kvh = 0; kvh < c.n_kv_heads; ++kvh)
        for (bool keys : {true, false}) {
          const auto& src = keys ? cap.k : cap.v;
          const Vector<float> d = kv::angular_distances(cols(src[static_cast<size_t>(l)], kvh, hd),
                                                        cols(src[static_cast<size_t>(l + 1)], kvh, hd));
          (keys ? dk : dv).insert((keys ? dk : dv).end(), d.data(), d.data() + d.size());
        }
    std::printf("layers %lld-%lld, angular distance Omega/pi of a token's rows in the two layers (10%% / 50%% / 90%%): "
                "keys %.3f / %.3f / %.3f, values %.3f / %.3f / %.3f\n",
                static_cast<long long>(first), static_cast<long long>(last - 1), quantile(dk, 0.1), quantile(dk, 0.5),
                quantile(dk, 0.9), quantile(dv, 0.1), quantile(dv, 0.5), quantile(dv, 0.9));
  }
  std::printf("\n| layers | retain rule | retained tokens | attention error (merged layers) | keys only | values only | bytes vs float32 |\n");
  std::printf("|---|---|---|---|---|---|---|\n");
  struct Rule {
    std::string name;
    double absolute, gamma;  // gamma < 0: absolute threshold
  };
  const std::vector<Rule> rules = {{"none (merge all)", 1.0, -1}, {"distance > 0.5", 0.5, -1},
                                   {"distance > 0.4", 0.4, -1}, {"relative, gamma 0.05", 0, 0.05}};
  for (auto [first, last] : {std::pair<int64_t, int64_t>{c.n_layers / 2, c.n_layers}, {0, c.n_layers}})
    for (const Rule& rule : rules) {
      std::vector<int64_t> layers;
      uint64_t bytes = 0, dense = 0, retained = 0, total = 0;
      // Pairs (first, first+1), (first+2, first+3), ...; each merged pair restored into both layers.
      std::vector<Approx> restored(static_cast<size_t>(c.n_layers * c.n_kv_heads));
      for (int64_t l = first; l + 1 < last; l += 2) {
        layers.insert(layers.end(), {l, l + 1});
        for (int64_t kvh = 0; kvh < c.n_kv_heads; ++kvh) {
          Approx a0, a1;
          for (bool keys : {true, false}) {
            const auto& src = keys ? cap.k : cap.v;
            const RowMatrix<float> x = cols(src[static_cast<size_t>(l)], kvh, hd);
            const RowMatrix<float> y = cols(src[static_cast<size_t>(l + 1)], kvh, hd);
            kv::MergeOptions o;
            o.retain_distance =
                rule.gamma < 0 ? rule.absolute : kv::relative_threshold(kv::angular_distances(x, y), rule.gamma);
            const kv::MergedPair m = kv::merge(x, y, o);
            bytes += m.bytes();
            dense += static_cast<uint64_t>(2 * x.size()) * sizeof(float);
            retained += m.retained.size();
            total += static_cast<uint64_t>(x.rows());
            (keys ? a0.k : a0.v) = m.restore(0);
            (keys ? a1.k : a1.v) = m.restore(1);
          }
          restored[static_cast<size_t>(l * c.n_kv_heads + kvh)] = std::move(a0);
          restored[static_cast<size_t>((l + 1) * c.n_kv_heads + kvh)] = std::move(a1);
        }
      }
      const Score s = scorer.score(
          [&](int64_t l, int64_t kvh) { return restored[static_cast<size_t>(l * c.n_kv_heads + kvh)]; }, layers);
      std::printf("| %lld-%lld | %s | %.2f%% | %.4f | %.4f | %.4f | %.3f |\n", static_cast<long long>(first),
                  static_cast<long long>(last - 1), rule.name.c_str(),
                  100.0 * static_cast<double>(retained) / static_cast<double>(total), s.both, s.keys, s.values,
                  static_cast<double>(bytes) / static_cast<double>(dense));
    }
  std::printf("\n");
}

void lowrank(const Capture& calib, const Capture& cap, const nn::LlamaConfig& c, const Scorer& scorer) {
  const int64_t hd = c.head_dim, kvd = c.n_kv_heads * hd;
  std::printf("## Low-rank K and V (basis from the calibration slice, both at the same rank)\n\n");
  std::printf("| basis | rank | coefficients/token/head (K+V) | discarded energy K, V: calibration | evaluation | "
              "attention error | keys only | values only |\n");
  std::printf("|---|---|---|---|---|---|---|---|\n");
  auto energy = [](const RowMatrix<float>& x, const RowMatrix<float>& xr) {
    return (x.cast<double>() - xr.cast<double>()).squaredNorm() / x.cast<double>().squaredNorm();
  };
  // Per head, with keys after RoPE (what the cache holds) and before it (the choice of
  // Palu, whose cache holds pre-RoPE latents and applies RoPE after reconstruction).
  for (bool pre_rope : {false, true})
    for (int64_t r : {8, 16, 32, 48}) {
      double ck_e = 0, cv_e = 0, ek_e = 0, ev_e = 0;
      std::vector<Approx> approx(static_cast<size_t>(c.n_layers * c.n_kv_heads));
      for (int64_t l = 0; l < c.n_layers; ++l) {
        const size_t li = static_cast<size_t>(l);
        const auto& calib_k = pre_rope ? calib.k_pre[li] : calib.k[li];
        const auto& eval_k = pre_rope ? cap.k_pre[li] : cap.k[li];
        RowMatrix<float> k_layer(eval_k.rows(), kvd), v_layer(eval_k.rows(), kvd);
        for (int64_t kvh = 0; kvh < c.n_kv_heads; ++kvh) {
          kv::LowRankOptions o;
          o.rank = std::min<int64_t>(r, calib_k.rows());  // an SVD has at most min(tokens, features) components
          const kv::LowRankBasis bk = kv::LowRankBasis::fit(kv::head_slice(calib_k, kvh, hd), o);
          const kv::LowRankBasis bv = kv::LowRankBasis::fit(kv::head_slice(calib.v[li], kvh, hd), o);
          ck_e += bk.relative_error(o.rank);
          cv_e += bv.relative_error(o.rank);
          const RowMatrix<float> xk = kv::head_slice(eval_k, kvh, hd), xv = kv::head_slice(cap.v[li], kvh, hd);
          k_layer.middleCols(kvh * hd, hd) = bk.reconstruct(bk.project(xk));
          v_layer.middleCols(kvh * hd, hd) = bv.reconstruct(bv.project(xv));
          ek_e += energy(xk, k_layer.middleCols(kvh * hd, hd));
          ev_e += energy(xv, v_layer.middleCols(kvh * hd, hd));
        }
        if (pre_rope) nn::apply_rope(k_layer.data(), k_layer.rows(), c.n_kv_heads, hd, 0, c.rope_theta);
        for (int64_t kvh = 0; kvh < c.n_kv_heads; ++kvh)
          approx[static_cast<size_t>(l * c.n_kv_heads + kvh)] = {cols(k_layer, kvh, hd), cols(v_layer, kvh, hd)};
      }
      const double heads = static_cast<double>(c.n_layers * c.n_kv_heads);
      const Score s = scorer.score([&](int64_t l, int64_t kvh) { return approx[static_cast<size_t>(l * c.n_kv_heads + kvh)]; });
      std::printf("| per head, keys %s RoPE | %lld | %lld | %.4f, %.4f | %.4f, %.4f | %.4f | %.4f | %.4f |\n",
                  pre_rope ? "before" : "after", static_cast<long long>(r), static_cast<long long>(2 * r), ck_e / heads,
                  cv_e / heads, ek_e / heads, ev_e / heads, s.both, s.keys, s.values);
    }
  // Whole layer (3 heads together) and xKV groups of adjacent layers, keys after RoPE; the rank is
  // chosen so that the coefficients per token and head match the per-head rows above.
  for (int64_t span : {1, 2, 4})
    for (int64_t per_head : {16, 32}) {
      const int64_t r = per_head * c.n_kv_heads * span;
      double ck_e = 0, cv_e = 0, ek_e = 0, ev_e = 0;
      int64_t groups = 0;
      std::vector<Approx> approx(static_cast<size_t>(c.n_layers * c.n_kv_heads));
      for (int64_t l0 = 0; l0 < c.n_layers; l0 += span) {
        const int64_t l1 = std::min(c.n_layers, l0 + span);
        std::vector<RowMatrix<float>> ck, cv, xk, xv;
        for (int64_t l = l0; l < l1; ++l) {
          ck.push_back(calib.k[static_cast<size_t>(l)]);
          cv.push_back(calib.v[static_cast<size_t>(l)]);
          xk.push_back(cap.k[static_cast<size_t>(l)]);
          xv.push_back(cap.v[static_cast<size_t>(l)]);
        }
        kv::LowRankOptions o;
        o.rank = std::min<int64_t>({r, kvd * (l1 - l0), ck[0].rows()});
        const kv::CrossLayerBasis bk = kv::CrossLayerBasis::fit(ck, o), bv = kv::CrossLayerBasis::fit(cv, o);
        ck_e += bk.joint().relative_error(o.rank);
        cv_e += bv.joint().relative_error(o.rank);
        ++groups;
        const RowMatrix<float> pk = bk.project(xk), pv = bv.project(xv);
        double ek = 0, ev = 0, nk = 0, nv = 0;
        for (int64_t l = l0; l < l1; ++l) {
          const RowMatrix<float> kl = bk.reconstruct(pk, l - l0), vl = bv.reconstruct(pv, l - l0);
          const size_t x = static_cast<size_t>(l - l0);
          ek += (xk[x] - kl).cast<double>().squaredNorm();
          ev += (xv[x] - vl).cast<double>().squaredNorm();
          nk += xk[x].cast<double>().squaredNorm();
          nv += xv[x].cast<double>().squaredNorm();
          for (int64_t kvh = 0; kvh < c.n_kv_heads; ++kvh)
            approx[static_cast<size_t>(l * c.n_kv_heads + kvh)] = {cols(kl, kvh, hd), cols(vl, kvh, hd)};
        }
        ek_e += ek / nk;
        ev_e += ev / nv;
      }
      const double g = static_cast<double>(groups);
      const Score s = scorer.score([&](int64_t l, int64_t kvh) { return approx[static_cast<size_t>(l * c.n_kv_heads + kvh)]; });
      const std::string name = span == 1 ? "per layer (3 heads)" : "xKV, " + std::to_string(span) + " layers";
      std::printf("| %s | %lld | %lld | %.4f, %.4f | %.4f, %.4f | %.4f | %.4f | %.4f |\n", name.c_str(),
                  static_cast<long long>(r), static_cast<long long>(2 * per_head), ck_e / g, cv_e / g, ek_e / g,
                  ev_e / g, s.both, s.keys, s.values);
    }
  std::printf("\n");
}

void run(const Args& a) {
  require(a.queries <= a.tokens, "--queries ", a.queries, " exceeds --tokens ", a.tokens);
  const auto slice = nn::TextSlice::parse(a.text, a.slice), calib_slice = nn::TextSlice::parse(a.text, a.calib_slice);
  require(a.no_lowrank || !calib_slice.overlaps(slice), "--calib-slice ", calib_slice.describe(), " overlaps --slice ",
          slice.describe());
  const auto t0 = std::chrono::steady_clock::now();
  const auto file = io::open_model(a.model);
  const nn::LlamaModel model = nn::LlamaModel::load(*file);
  const nn::BpeTokenizer tok = nn::BpeTokenizer::from_model(*file);
  const auto tokens = nn::tokenize_slice(tok, slice, a.tokens);
  require(static_cast<int64_t>(tokens.size()) == a.tokens, slice.describe(), " has only ", tokens.size(), " tokens");
  const auto& c = model.config();
  std::printf("model: %s (%lld layers, %lld KV heads of %lld)\n", a.model.filename().string().c_str(),
              static_cast<long long>(c.n_layers), static_cast<long long>(c.n_kv_heads), static_cast<long long>(c.head_dim));
  std::printf("text: %s, %lld tokens; error over the last %lld queries of every layer and query head\n\n",
              slice.describe().c_str(), static_cast<long long>(a.tokens), static_cast<long long>(a.queries));
  const Capture cap = capture(model, tokens);
  const Scorer scorer(cap, c, a.queries);
  quantization(a, cap, c, scorer);
  if (!a.no_merge) merging(cap, c, scorer);
  if (!a.no_lowrank) {
    const auto calib_tokens = nn::tokenize_slice(tok, calib_slice, a.tokens);
    std::printf("calibration: %s, %lld tokens\n\n", calib_slice.describe().c_str(), static_cast<long long>(calib_tokens.size()));
    lowrank(capture(model, calib_tokens), cap, c, scorer);
  }
  std::printf("total %.1f s\n", seconds_since(t0));
}

}  // namespace

int main(int argc, char** argv) {
  strata::ensure_fast_blas(argc, argv);
  CLI::App app{"KV cache quantization, merging and low-rank projection on SmolLM2-135M's real caches",
               "kv_quant_eval"};
  Args a;
  a.add_options(app);
  return strata::examples::run_main(app, argc, argv, [&] { run(a); });
}
