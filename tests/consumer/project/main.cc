// A stand-in for an engine that links strata through find_package: it must build and run.
#include <cstdio>

#include <strata/strata.hpp>

int main(int argc, char** argv) {
  strata::ensure_fast_blas(argc, argv);
  strata::Tensor t = strata::Tensor::zeros<float>({3, 4});
  auto m = strata::as_eigen(t.view<float>());
  m.setIdentity();
  const float trace = m.trace();
  const strata::f16 h = strata::f32_to_f16(trace);
  std::printf("strata %s: trace %.1f, as f16 %.1f\n", STRATA_VERSION_STRING, trace, strata::f16_to_f32(h));
  return trace == 3.0f && strata::f16_to_f32(h) == 3.0f ? 0 : 1;
}
