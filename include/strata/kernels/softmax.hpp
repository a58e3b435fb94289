#pragma once
// Exponential sums over long rows: the log-softmax of a vocabulary-wide logit row, the KL divergence
// between two log-probability rows, and the exponentials of an attention row. Every KL figure strata
// reports runs through these (about 50,000 exponentials per scored token for SmolLM2), so they are
// SIMD (Highway's dynamic dispatch, hwy::contrib's float exponential, at most 4 ulp) with the sums
// carried in double: each vector accumulates at most 64 products in float before they are added to a
// double total. The `_reference` functions are the scalar oracles (double exponentials and sums);
// the SIMD versions agree with them to about 1e-6 relative.
#include <cstdint>

namespace strata::kernels {

// max_i x_i over n >= 1 floats.
float row_max(const float* x, int64_t n);

// sum_i exp(x_i - shift). Inputs may be -inf (their term is 0).
double sum_exp(const float* x, int64_t n, float shift);
double sum_exp_reference(const float* x, int64_t n, float shift);

// x_i <- exp(x_i - shift) in place; returns the sum of the new values (in double).
double exp_shift(float* x, int64_t n, float shift);

// In place: x_i <- x_i - log(sum_j exp(x_j)) (a log-softmax), the sum shifted by the row's maximum.
void log_softmax_inplace(float* x, int64_t n);

// SwiGLU's gate in place: gate_i <- silu(gate_i) * up_i = gate_i / (1 + exp(-gate_i)) * up_i.
// SIMD to about 1e-6 relative of silu_mul_reference (double exponential); a gate below -88 gives
// 0 up to 1e-36 (its exact value is smaller still).
void silu_mul(float* gate, const float* up, int64_t n);
void silu_mul_reference(float* gate, const float* up, int64_t n);

// KL(P || Q) = sum_i exp(lp_i) (lp_i - lq_i) for two rows of log-probabilities.
double kl_from_log_probs(const float* lp, const float* lq, int64_t n);
double kl_from_log_probs_reference(const float* lp, const float* lq, int64_t n);

}  // namespace strata::kernels
