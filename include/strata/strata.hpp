#pragma once
// Umbrella header: everything strata offers an engine.
#include "strata/core/blas.hpp"
#include "strata/core/dtype.hpp"
#include "strata/core/eigen.hpp"
#include "strata/core/error.hpp"
#include "strata/core/parallel.hpp"
#include "strata/core/tensor.hpp"
#include "strata/version.hpp"
