# Warnings and build flavours shared by every strata target, carried through one interface target.
add_library(strata_build_flags INTERFACE)
target_compile_options(strata_build_flags INTERFACE
  $<$<COMPILE_LANG_AND_ID:CXX,GNU,Clang>:-Wall -Wextra -Wpedantic -Wno-unused-parameter>)

if(STRATA_NATIVE)
  target_compile_options(strata_build_flags INTERFACE $<$<COMPILE_LANGUAGE:CXX>:-march=native>)
endif()

if(STRATA_SANITIZE)
  set(_strata_san -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined)
  target_compile_options(strata_build_flags INTERFACE $<$<COMPILE_LANGUAGE:CXX>:${_strata_san}>)
  target_link_options(strata_build_flags INTERFACE ${_strata_san})
endif()
