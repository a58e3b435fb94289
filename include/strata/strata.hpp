#pragma once
// Umbrella header: everything strata offers an engine, module by module in the order they build on
// each other (core -> linalg / kernels -> io -> nn -> compress -> budget / kv -> pipeline).
//
// Two headers are left to be included on purpose: strata/kernels/cuda.hpp belongs to the optional
// strata::cuda target (a CPU-only engine neither includes it nor links cudart), and
// strata/core/xtensor.hpp is included here only where xtensor is installed.

// core
#include "strata/core/blas.hpp"
#include "strata/core/dtype.hpp"
#include "strata/core/eigen.hpp"
#include "strata/core/error.hpp"
#include "strata/core/parallel.hpp"
#include "strata/core/tensor.hpp"
#if __has_include(<xtensor/xadapt.hpp>)
#include "strata/core/xtensor.hpp"
#endif
#include "strata/version.hpp"

// linalg
#include "strata/linalg/decompositions.hpp"
#include "strata/linalg/svd.hpp"

// kernels
#include "strata/kernels/ggml_blocks.hpp"
#include "strata/kernels/ggml_codec.hpp"
#include "strata/kernels/ggml_dequant.hpp"

// io
#include "strata/io/data_paths.hpp"
#include "strata/io/gguf.hpp"
#include "strata/io/llama2c.hpp"
#include "strata/io/mapped_file.hpp"
#include "strata/io/model.hpp"
#include "strata/io/safetensors.hpp"

// nn
#include "strata/nn/attention.hpp"
#include "strata/nn/bert.hpp"
#include "strata/nn/calibration.hpp"
#include "strata/nn/dataset.hpp"
#include "strata/nn/eval.hpp"
#include "strata/nn/hooks.hpp"
#include "strata/nn/linear.hpp"
#include "strata/nn/llama.hpp"
#include "strata/nn/tokenizer.hpp"

// compress
#include "strata/compress/compressor.hpp"
#include "strata/compress/ggml/quantize.hpp"
#include "strata/compress/lowrank/lowrank.hpp"
#include "strata/compress/model_io.hpp"
#include "strata/compress/prune/prune.hpp"
#include "strata/compress/quant/quant.hpp"
#include "strata/compress/registry.hpp"

// budget
#include "strata/budget/allocator.hpp"
#include "strata/budget/json_reader.hpp"
#include "strata/budget/recipe.hpp"
#include "strata/budget/table.hpp"

// kv
#include "strata/kv/allocate.hpp"
#include "strata/kv/cache.hpp"
#include "strata/kv/evaluate.hpp"
#include "strata/kv/lowrank.hpp"
#include "strata/kv/merge.hpp"
#include "strata/kv/policy.hpp"
#include "strata/kv/quant.hpp"
#include "strata/kv/scorers.hpp"
#include "strata/kv/session.hpp"

// gated
#include "strata/gated/codec.hpp"
#include "strata/gated/gated_compression.hpp"
#include "strata/gated/logistic.hpp"
#include "strata/gated/task.hpp"

// pipeline
#include "strata/pipeline/pipeline.hpp"
