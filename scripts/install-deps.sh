#!/usr/bin/env bash
# Installs everything strata needs to build, test and benchmark, from Debian's own packages.
# Idempotent and non-interactive; safe to run on every invocation of the README commands.
set -euo pipefail

packages=(
  build-essential g++ cmake ninja-build pkg-config git python3 python3-pip python3-venv
  libeigen3-dev libopenblas-dev liblapacke-dev
  libxtensor-dev xtl-dev libhwy-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  nlohmann-json3-dev libcli11-dev
  clang libclang-rt-14-dev
  gnuplot-nox
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "strata: all build dependencies present"
  exit 0
fi

echo "strata: installing ${missing[*]}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
