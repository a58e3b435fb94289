#pragma once
// Residual-stream rotation fused offline (QuaRot / SpinQuant's R1, no online transform): a Llama
// model rewritten so that it computes the same function in float, with the hidden state between
// blocks multiplied by an orthogonal Q. Outliers spread over all channels, which is what makes the
// rotated weights easier to quantize.
//
//   1. RMSNorm weights folded into the linear layers that read the normalized state: W diag(g) for
//      q/k/v (attn_norm), gate/up (ffn_norm) and the output head (output_norm); the norms become ones.
//   2. Q fused: token embedding rows E Q; q/k/v/gate/up W Q (their inputs are rotated); attn_output
//      and ffn_down Q^T W (their outputs are); the output head W Q. RMSNorm commutes with Q since
//      ||x Q|| = ||x||, so nothing else changes.
// A head tied to the embedding cannot stay tied: the embedding becomes E Q and the head
// E diag(g_out) Q, so the result carries its own output.weight (vocab x dim more floats).
// The result is an ordinary Llama model: written as GGUF (all F32), llama.cpp runs it unchanged.
// Only the residual stream is rotated; rotations inside attention (per-head values) or the FFN
// (before ffn_down) would need an online transform llama.cpp lacks and are not offered.
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "strata/core/eigen.hpp"
#include "strata/io/model.hpp"

namespace strata::compress {

enum class RotationKind {
  hadamard,  // diag(random signs) H / sqrt(n), H a Hadamard matrix (Sylvester and Paley I blocks)
  random,    // Q of the QR factorization of a Gaussian matrix (signs fixed by R's diagonal): Haar
};
RotationKind parse_rotation_kind(std::string_view name);  // "hadamard", "random"; throws otherwise
std::string_view rotation_kind_name(RotationKind kind);

struct RotateOptions {
  RotationKind kind = RotationKind::hadamard;
  uint64_t seed = 0;
  bool rotate = true;  // false: fold the norms only
};

// Orders of the Hadamard blocks whose Kronecker product gives order n: powers of two (Sylvester)
// and q + 1 for primes q = 3 mod 4 (Paley I); e.g. 576 -> {72, 8}, 64 -> {64}. Empty when n has
// no such factorization (n = 9, or any n not divisible by 4 beyond 1 and 2).
std::vector<int64_t> hadamard_orders(int64_t n);
// A Hadamard matrix of order n (entries +-1, H H^T = n I). Throws naming n when hadamard_orders(n)
// is empty.
Matrix<double> hadamard_matrix(int64_t n);
// The orthogonal n x n matrix Q of `kind`, reproducible from `seed`.
Matrix<double> rotation_matrix(int64_t n, RotationKind kind, uint64_t seed);

// Throws strata::Error naming the file before any work when the model is not a Llama-family
// decoder (a BERT encoder, say), holds a tensor the rotation does not know how to transform
// (biases, rope_freqs, ...), or, for the Hadamard kind, its hidden size has no Hadamard matrix here.
void check_rotatable(const io::Model& file, const RotateOptions& options = {});

// The folded (and rotated) model, every tensor float32 and held in memory, with the file's config
// and metadata (tied_embeddings false: output.weight is always present). Opens with
// nn::LlamaModel::load like any file.
std::unique_ptr<io::Model> rotate_model(const io::Model& file, const RotateOptions& options = {});

// Writes `model` (every tensor float32, e.g. rotate_model's) as a GGUF llama.cpp loads: with the
// metadata of `source` when it is a GGUF (tokenizer included; general.file_type becomes 0, all F32),
// otherwise with the llama.* hyper-parameters of its config only. `note` goes to "strata.rotation".
// Atomic: on failure nothing is left at `out`.
void write_f32_gguf(const io::Model& model, const io::Model& source, const std::filesystem::path& out,
                    const std::string& note);

}  // namespace strata::compress
