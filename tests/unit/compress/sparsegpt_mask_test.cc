// SparseGPT's unstructured mask: the paper's rule (per block of columns, the lowest w^2 / [H^-1]_jj^2
// over all rows of the block) against a reference written from the definitions, exact counts, the
// stored form of rows with different counts, the registry's knob, and the output error of both rules
// on a real model's layers.
#include <gtest/gtest.h>

#include <Eigen/LU>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

#include "strata/compress/compressor.hpp"
#include "strata/compress/prune/prune.hpp"
#include "strata/io/model.hpp"
#include "strata/nn/calibration.hpp"
#include "strata/nn/eval.hpp"
#include "strata/nn/llama.hpp"
#include "test_util.hpp"

namespace strata::compress::prune {
namespace {

using strata::testing::correlated_hessian;
using strata::testing::heavy_tailed;

SparseGptOptions with_mask(SparseGptMask mask, int64_t block = 128, double damp = 0.01) {
  SparseGptOptions o;
  o.block = block;
  o.damp = damp;
  o.mask = mask;
  return o;
}

// A Hessian from random inputs with correlated channels.
Matrix<double> random_hessian(int64_t cols, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> gauss(0.0, 1.0);
  Matrix<double> x(4 * cols, cols), mix(cols, cols);
  for (int64_t i = 0; i < x.size(); ++i) x.data()[i] = gauss(rng);
  for (int64_t i = 0; i < mix.size(); ++i) mix.data()[i] = (i % (cols + 1) == 0 ? 1.0 : 0.0) + 0.4 * gauss(rng);
  x = x * mix;
  return x.transpose() * x / static_cast<double>(x.rows());
}

// The paper's algorithm from its definitions, with no Cholesky factor and no lazy updates: columns in
// order; at the first column of every block, the block's weights (all rows, as the earlier columns
// left them) are ranked by w_j^2 / d_j, d_j = [(H_{j:, j:})^-1]_00 the first diagonal entry of the
// inverse of H restricted to the columns not yet visited (the paper's [H^-1]_jj^2, with its H^-1 the
// Cholesky factor), and the lowest `lose` are pruned (ties: lower row, then lower column); removing
// w_j moves the later columns of its row by -w_j (H_{j:, j:})^-1 e_0 / d_j. `lose` for a block is its
// width's share of the layer's total, floor(total * end / n) - floor(total * begin / n).
Pruned paper_reference(const RowMatrix<float>& w, const Matrix<double>& damped, double sparsity, int64_t block) {
  const int64_t rows = w.rows(), n = w.cols();
  const int64_t total = rows * static_cast<int64_t>(std::floor(sparsity * static_cast<double>(n) + 1e-9));
  std::vector<Matrix<double>> tail_inverse;
  Vector<double> d(n);
  for (int64_t j = 0; j < n; ++j) {
    tail_inverse.push_back(damped.bottomRightCorner(n - j, n - j).inverse());
    d[j] = tail_inverse.back()(0, 0);
  }
  RowMatrix<double> x = w.cast<double>();
  Pruned out{RowMatrix<float>(rows, n), Mask::Ones(rows, n)};
  for (int64_t j = 0; j < n; ++j) {
    if (j % block == 0) {
      const int64_t end = std::min(n, j + block), lose = total * end / n - total * j / n;
      std::vector<std::pair<int64_t, int64_t>> cells;
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t c = j; c < end; ++c) cells.emplace_back(r, c);
      const auto score = [&](const std::pair<int64_t, int64_t>& a) { return x(a.first, a.second) * x(a.first, a.second) / d[a.second]; };
      std::stable_sort(cells.begin(), cells.end(), [&](const auto& a, const auto& b) { return score(a) < score(b); });
      for (int64_t k = 0; k < lose; ++k) out.mask(cells[static_cast<size_t>(k)].first, cells[static_cast<size_t>(k)].second) = 0;
    }
    const Matrix<double>& hinv = tail_inverse[static_cast<size_t>(j)];
    for (int64_t r = 0; r < rows; ++r) {
      if (out.mask(r, j)) continue;
      x.row(r).tail(n - j) -= (x(r, j) / hinv(0, 0)) * hinv.col(0).transpose();
      x(r, j) = 0;
    }
  }
  out.weight = x.cast<float>();
  return out;
}

Matrix<double> damped(const Matrix<double>& h, double damp) {
  Matrix<double> out = h;
  out.diagonal().array() += damp * h.diagonal().mean();
  return out;
}

int64_t zeros_of(const Mask& m) { return m.size() - m.cast<int64_t>().sum(); }

TEST(SparseGptMask, MatchesThePapersAlgorithmWrittenOut) {
  const int64_t rows = 6, cols = 20;
  const RowMatrix<float> w = heavy_tailed(rows, cols, 21);
  const Matrix<double> h = random_hessian(cols, 22);
  for (double sparsity : {0.5, 0.3, 0.75}) {
    for (int64_t block : {cols, int64_t{8}, int64_t{5}, int64_t{1}}) {
      SCOPED_TRACE("sparsity " + std::to_string(sparsity) + ", block " + std::to_string(block));
      const Pruned got = sparsegpt(w, h, Pattern::unstructured(sparsity), with_mask(SparseGptMask::block, block));
      const Pruned want = paper_reference(w, damped(h, 0.01), sparsity, block);
      ASSERT_EQ(got.mask, want.mask);
      EXPECT_LT((got.weight - want.weight).cwiseAbs().maxCoeff(), 1e-5f * w.cwiseAbs().maxCoeff());
    }
  }
}

// The block's selection by brute force: of every way to prune `lose` of the block's rows x columns
// weights, the rule picks one with the least summed OBS saliency w^2 / d (the first block, where the
// weights are still the original ones).
TEST(SparseGptMask, FirstBlockIsTheLeastSaliencyChoiceOfAllSubsets) {
  const int64_t rows = 3, cols = 8, block = 4;
  const RowMatrix<float> w = heavy_tailed(rows, cols, 31);
  const Matrix<double> h = random_hessian(cols, 32);
  const Matrix<double> hd = damped(h, 0.01);
  Vector<double> d(block);
  for (int64_t j = 0; j < block; ++j) d[j] = hd.bottomRightCorner(cols - j, cols - j).inverse()(0, 0);
  const Pruned got = sparsegpt(w, h, Pattern::unstructured(0.5), with_mask(SparseGptMask::block, block));
  const int64_t cells = rows * block, lose = rows * cols / 2 * block / cols;  // 6 of 12
  // Scores of the first block: only the column order inside the block changes d, not the weights.
  double best = std::numeric_limits<double>::infinity(), chosen = 0;
  for (uint32_t subset = 0; subset < (1u << cells); ++subset) {
    if (std::popcount(subset) != lose) continue;
    double sum = 0;
    for (int64_t k = 0; k < cells; ++k)
      if (subset >> k & 1u) {
        const int64_t r = k / block, c = k % block;
        sum += static_cast<double>(w(r, c)) * w(r, c) / d[c];
      }
    best = std::min(best, sum);
  }
  int64_t lost = 0;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < block; ++c)
      if (!got.mask(r, c)) {
        chosen += static_cast<double>(w(r, c)) * w(r, c) / d[c];
        ++lost;
      }
  EXPECT_EQ(lost, lose);
  EXPECT_NEAR(chosen, best, 1e-12 * best);
}

TEST(SparseGptMask, SparsityIsExactOverallAndPerBlock) {
  const Matrix<double> h = correlated_hessian(172, 41);
  for (int64_t rows : {int64_t{1}, int64_t{7}, int64_t{64}}) {
    const RowMatrix<float> w = heavy_tailed(rows, 172, 42 + static_cast<uint64_t>(rows));
    for (double sparsity : {0.0, 0.1, 0.29, 0.5, 0.73, 0.9}) {
      for (int64_t block : {int64_t{128}, int64_t{32}, int64_t{50}}) {
        SCOPED_TRACE(std::to_string(rows) + " rows, sparsity " + std::to_string(sparsity) + ", block " +
                     std::to_string(block));
        const Pattern p = Pattern::unstructured(sparsity);
        const Pruned r = sparsegpt(w, h, p, with_mask(SparseGptMask::block, block));
        const int64_t total = rows * p.pruned_per_row(172);
        EXPECT_EQ(zeros_of(r.mask), total);
        for (int64_t i1 = 0; i1 < 172; i1 += block) {
          const int64_t i2 = std::min<int64_t>(172, i1 + block);
          const Mask part = r.mask.middleCols(i1, i2 - i1);
          EXPECT_EQ(zeros_of(part), total * i2 / 172 - total * i1 / 172) << "block at column " << i1;
        }
        for (int64_t i = 0; i < w.size(); ++i)
          if (!r.mask.data()[i]) ASSERT_EQ(r.weight.data()[i], 0.0f);
        // The per-row rule removes the same number, floor(sparsity * cols) from each row.
        const Pruned q = sparsegpt(w, h, p, with_mask(SparseGptMask::row, block));
        for (int64_t row = 0; row < rows; ++row) EXPECT_EQ(zeros_of(q.mask.row(row)), p.pruned_per_row(172));
      }
    }
  }
}

TEST(SparseGptMask, NofMIgnoresTheRule) {
  const RowMatrix<float> w = heavy_tailed(16, 64, 51);
  const Matrix<double> h = correlated_hessian(64, 52);
  const Pruned a = sparsegpt(w, h, Pattern::n_of_m(2, 4), with_mask(SparseGptMask::block));
  const Pruned b = sparsegpt(w, h, Pattern::n_of_m(2, 4), with_mask(SparseGptMask::row));
  EXPECT_EQ(a.mask, b.mask);
  EXPECT_EQ(a.weight, b.weight);
}

TEST(SparseGptMask, UnevenRowsStoreAndReloadExactly) {
  const RowMatrix<float> w = heavy_tailed(24, 96, 61);
  const Matrix<double> h = correlated_hessian(96, 62);
  const Pattern p = Pattern::unstructured(0.5);
  const Pruned r = sparsegpt(w, h, p, with_mask(SparseGptMask::block, 32));
  // Rows really do differ, or this test would not exercise the uneven form.
  int64_t lo = 96, hi = 0;
  for (int64_t row = 0; row < 24; ++row) {
    lo = std::min(lo, zeros_of(r.mask.row(row)));
    hi = std::max(hi, zeros_of(r.mask.row(row)));
  }
  ASSERT_LT(lo, hi);
  for (const char* knob : {"sparsity=0.5,values=f32", "sparsity=0.5"}) {
    SCOPED_TRACE(knob);
    const Setting s = parse_setting(knob, "t");
    const Compressed c = encode(r, s, "prune.sparsegpt", knob);
    EXPECT_EQ(c.stored_bytes(), stored_bytes(24, 96, s));
    const RowMatrix<float> back = decode(c);
    for (int64_t i = 0; i < w.size(); ++i) {
      const float v = r.weight.data()[i];
      ASSERT_EQ(back.data()[i], s.values == ValueType::f32 ? v : f16_to_f32(f32_to_f16(v))) << i;
    }
  }
  // A mask with one bit more than the layer keeps is refused.
  const Setting s = parse_setting("sparsity=0.5", "t");
  Compressed c = encode(r, s, "prune.sparsegpt", "sparsity=0.5");
  auto* bytes = reinterpret_cast<uint8_t*>(c.tensors.at("mask").raw());
  int64_t j = 0;
  while (r.mask(0, j)) ++j;
  bytes[j / 8] |= static_cast<uint8_t>(1u << (j % 8));
  EXPECT_THROW(decode(c), Error);
  // So is a pruned layer with the wrong total.
  Pruned off = r;
  off.mask(0, j) = 1;
  EXPECT_THROW(encode(off, s, "prune.sparsegpt", "sparsity=0.5"), Error);
}

TEST(SparseGptMask, RegistryDefaultIsThePapersRuleAndMaskRowIsTheOption) {
  const RowMatrix<float> w = heavy_tailed(32, 256, 71);
  const Matrix<double> h = correlated_hessian(256, 72);
  const Vector<double> ms = h.diagonal();
  const LayerCalibration calib{&h, &ms, nullptr, 1024};
  const Layer layer{"blk.3.ffn_up.weight", &w};
  const WeightCompressor& c = find_compressor("prune.sparsegpt");
  const Pattern p = Pattern::unstructured(0.5);
  const auto expect_form = [&](const char* knob, SparseGptMask rule) {
    SCOPED_TRACE(knob);
    const Compressed comp = c.apply(layer, calib, knob);
    EXPECT_EQ(comp.stored_bytes(), static_cast<uint64_t>(c.cost(layer, knob).bytes));
    const Pruned want = sparsegpt(w, h, p, with_mask(rule));
    EXPECT_EQ(c.reconstruct(comp), want.weight);
    const auto opts = c.options_for(layer, calib, {knob});
    EXPECT_NEAR(opts[0].error, output_error(w, want.weight, &h), 1e-9);
  };
  expect_form("sparsity=0.5,values=f32", SparseGptMask::block);
  expect_form("sparsity=0.5,values=f32,mask=block", SparseGptMask::block);
  expect_form("sparsity=0.5,values=f32,mask=row", SparseGptMask::row);
  // The two rules differ on this layer, so the knob is not a no-op.
  EXPECT_NE(sparsegpt(w, h, p, with_mask(SparseGptMask::block)).mask,
            sparsegpt(w, h, p, with_mask(SparseGptMask::row)).mask);
  const auto message = [&](const WeightCompressor& comp, const char* knob) {
    try {
      comp.apply(layer, calib, knob);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  for (const char* other : {"prune.magnitude", "prune.wanda"}) {
    const std::string msg = message(find_compressor(other), "sparsity=0.5,mask=row");
    EXPECT_NE(msg.find("blk.3.ffn_up.weight"), std::string::npos) << msg;
    EXPECT_NE(msg.find("mask"), std::string::npos) << msg;
  }
  const std::string msg = message(c, "sparsity=0.5,mask=rows");
  EXPECT_NE(msg.find("blk.3.ffn_up.weight"), std::string::npos) << msg;
}

// ---- stories260K: both rules on every linear layer of the five blocks -------------------------------

std::filesystem::path stories_path() {
  return strata::testing::shared_data_dir() / "models/stories260K/stories260K.bin";
}

TEST(SparseGptMaskStories, PapersRuleAgainstThePerRowRuleOnRealLayers) {
  STRATA_REQUIRE_FILE(stories_path(), "shared data: ../shared/data/models/stories260K");
  const auto file = io::open_model(stories_path());
  const nn::LlamaModel model = nn::LlamaModel::load(*file);
  const auto seqs = nn::sample_sequences(model, 16, 128, 1, 100);
  nn::Calibration calib;
  size_t next = 0;
  nn::calibrate(model, [&](std::vector<int32_t>& out) {
    if (next == seqs.size()) return false;
    out = seqs[next++];
    return true;
  }, calib);
  for (double sparsity : {0.5, 0.7}) {
    const Pattern p = Pattern::unstructured(sparsity);
    double sum_block = 0, sum_row = 0;
    int layers = 0, block_not_worse = 0;
    for (const auto& name : model.linear_names()) {
      if (name.rfind("blk.", 0) != 0) continue;
      const RowMatrix<float> w = model.linear(name).dense_weight();
      const Matrix<double> h = calib.stats(name).hessian();
      // stories260K's layers have 64 or 172 inputs: blocks of 32 give the rule several blocks to adapt over.
      const double eb = output_error(w, sparsegpt(w, h, p, with_mask(SparseGptMask::block, 32), name).weight, &h);
      const double er = output_error(w, sparsegpt(w, h, p, with_mask(SparseGptMask::row, 32), name).weight, &h);
      sum_block += eb;
      sum_row += er;
      block_not_worse += eb <= er;
      ++layers;
    }
    std::printf("stories260K, sparsity %.1f, blocks of 32: summed output error over %d layers: paper's rule %.5f, "
                "per-row rule %.5f (paper's rule not worse on %d layers)\n",
                sparsity, layers, sum_block, sum_row, block_not_worse);
    ASSERT_EQ(layers, 35);
    EXPECT_LE(sum_block, sum_row) << "sparsity " << sparsity;
  }
}

}  // namespace
}  // namespace strata::compress::prune
