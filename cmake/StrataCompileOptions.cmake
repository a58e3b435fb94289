# Warnings and build flavours shared by every strata target, carried through one interface target.
add_library(strata_build_flags INTERFACE)
target_compile_options(strata_build_flags INTERFACE
  $<$<COMPILE_LANG_AND_ID:CXX,GNU,Clang>:-Wall -Wextra -Wpedantic -Wno-unused-parameter>
  # GCC 12 reports Eigen's AVX-512 reductions as "maybe uninitialized" inside its own intrinsics
  # headers: noise that would bury real warnings.
  $<$<COMPILE_LANG_AND_ID:CXX,GNU>:-Wno-maybe-uninitialized>)

if(STRATA_NATIVE)
  target_compile_options(strata_build_flags INTERFACE $<$<COMPILE_LANGUAGE:CXX>:-march=native>)
  # Highway 1.0.3 (Debian 12) leaves AVX3_DL out of its dynamic targets unless asked, even when
  # -march=native puts it in the baseline (CPUs with VNNI, VBMI2, VAES, VPOPCNTDQ, BITALG and AVX-VNNI),
  # and then refuses to compile ("best baseline should be included in dynamic targets").
  target_compile_definitions(strata_build_flags INTERFACE HWY_WANT_AVX3_DL)
endif()

if(STRATA_SANITIZE)
  set(_strata_san -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined)
  target_compile_options(strata_build_flags INTERFACE $<$<COMPILE_LANGUAGE:CXX>:${_strata_san}>)
  target_link_options(strata_build_flags INTERFACE ${_strata_san})
endif()

# libFuzzer builds: every strata source gets coverage instrumentation and the sanitizers, so that the
# fuzz targets in tests/fuzz (linked with -fsanitize=fuzzer) see inside the parsers they drive.
if(STRATA_BUILD_FUZZERS)
  if(NOT CMAKE_CXX_COMPILER_ID MATCHES "Clang")
    message(FATAL_ERROR "STRATA_BUILD_FUZZERS needs clang for libFuzzer (use the 'fuzz' preset or "
                        "-DCMAKE_CXX_COMPILER=clang++); this is ${CMAKE_CXX_COMPILER_ID}")
  endif()
  set(_strata_fuzz_san -fsanitize=fuzzer-no-link,address,undefined -fno-omit-frame-pointer
                       -fno-sanitize-recover=undefined)
  target_compile_options(strata_build_flags INTERFACE $<$<COMPILE_LANGUAGE:CXX>:${_strata_fuzz_san}>)
  target_link_options(strata_build_flags INTERFACE -fsanitize=address,undefined)
endif()
