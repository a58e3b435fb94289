// `strata info`: what this build of strata runs on (version, BLAS kernels, SIMD targets, threads).
#include <cstdio>

#include <hwy/targets.h>

#include "commands.hpp"
#include "strata/core/blas.hpp"
#include "strata/core/parallel.hpp"
#include "strata/version.hpp"

namespace strata::cli {

void register_info(CLI::App& app) {
  auto* cmd = app.add_subcommand("info", "Print the version, BLAS kernels, SIMD targets and threads in use");
  cmd->callback([] {
    const BlasInfo blas = blas_info();
    std::printf("strata %s\n", STRATA_VERSION_STRING);
    std::printf("BLAS:    %s\n", blas.describe().c_str());
    if (!blas.config.empty()) std::printf("         %s\n", blas.config.c_str());
    std::printf("SIMD:    best Highway target %s\n", hwy::TargetName(hwy::SupportedTargets() & ~(hwy::SupportedTargets() - 1)));
    std::printf("threads: %d\n", num_threads());
  });
}

}  // namespace strata::cli
