#include <gtest/gtest.h>

#include "strata/core/blas.hpp"

int main(int argc, char** argv) {
  strata::ensure_fast_blas(argc, argv);
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
