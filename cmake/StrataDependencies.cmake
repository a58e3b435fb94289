# Every dependency strata links comes from the system (Debian packages; see scripts/install-deps.sh).
find_package(Eigen3 3.4 REQUIRED NO_MODULE)
find_package(Threads REQUIRED)
find_package(OpenMP REQUIRED COMPONENTS CXX)

# BLAS and LAPACK through CMake's own modules, asking for OpenBLAS by name so that a reference BLAS
# picked up by the alternatives system never slips in silently.
if(NOT DEFINED BLA_VENDOR)
  set(BLA_VENDOR OpenBLAS)
endif()
find_package(BLAS REQUIRED)
find_package(LAPACK REQUIRED)
find_package(LAPACKE REQUIRED)

find_package(hwy REQUIRED)
find_package(nlohmann_json 3.10 REQUIRED)
find_package(xtensor QUIET)
