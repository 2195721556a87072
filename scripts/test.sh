#!/usr/bin/env bash
# The README's second command (and CI's): everything the tests need, then the
# tests. Installs clang + lld (for the C guest) when missing and allowed to.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v clang >/dev/null 2>&1 || ! command -v wasm-ld >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "scripts/test.sh: installing clang and lld for the C guest" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq clang lld) >/dev/null
  else
    echo "scripts/test.sh: clang and lld are needed (apt-get install clang lld)" >&2
    exit 1
  fi
fi
bash udfs/build.sh
cargo test --release --workspace --features weir/failpoints,weir/test-hooks "$@"
