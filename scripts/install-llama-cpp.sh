#!/usr/bin/env bash
# llama.cpp, the engine strata's outputs are compared against, through PyPI's llama-cpp-python
# (it builds llama.cpp from source for this CPU) and gguf (llama.cpp's Python reader), in a virtual
# environment of its own: .cache/llama-cpp (or STRATA_LLAMA_CPP_VENV). Idempotent; prints the path of
# the environment's python. The build takes several minutes on 2 cores, once.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${STRATA_LLAMA_CPP_VENV:-$repo/.cache/llama-cpp}
python=${PYTHON:-python3}
llama_cpp_version=0.3.36
gguf_version=0.19.0

# Native CPU kernels without AMX and without GPU backends. ggml's AMX matrix kernels crash (SIGSEGV
# in ggml_backend_amx_mul_mat on the first product) on the AMX-capable Xeon KVM guests strata is
# measured on, so the instruction sets stop at AVX-512 (VNNI, BF16), as on CPUs without AMX.
cmake_args='-DGGML_NATIVE=ON -DGGML_CUDA=OFF -DLLAMA_CURL=OFF -DCMAKE_C_FLAGS="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16" -DCMAKE_CXX_FLAGS="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"'
stamp=$venv/strata-build-args

if [[ -x $venv/bin/python && -f $stamp && $(cat "$stamp") == "$llama_cpp_version $cmake_args" ]] &&
   "$venv/bin/python" -c "import llama_cpp, gguf, sys; sys.exit(llama_cpp.__version__ != '$llama_cpp_version')" 2>/dev/null; then
  echo "$venv/bin/python"
  exit 0
fi
mkdir -p "$(dirname "$venv")"
"$python" -m venv "$venv" >&2
"$venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip >&2
rm -f "$stamp"
CMAKE_ARGS="$cmake_args" CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)} \
  "$venv/bin/python" -m pip install -q --disable-pip-version-check --no-cache-dir --force-reinstall --no-deps \
    "llama-cpp-python==$llama_cpp_version" >&2
"$venv/bin/python" -m pip install -q --disable-pip-version-check "llama-cpp-python==$llama_cpp_version" \
  "gguf==$gguf_version" >&2
"$venv/bin/python" -c "import llama_cpp, gguf" >&2
echo "$llama_cpp_version $cmake_args" > "$stamp"
echo "$venv/bin/python"
