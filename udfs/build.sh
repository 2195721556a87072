#!/usr/bin/env bash
# Builds every UDF module the examples and tests use into udfs/*.wasm:
#   Rust (udf-sdk)  -> udfs/wordcount.wasm, udfs/testops.wasm
#   C (clang)       -> udfs/wordcount_c.wasm, udfs/c_helpers.wasm
# WAT modules (udfs/wat/, udfs/hostile/) need no build: the engine loads .wat.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cd "$here"

if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown; then
  rustup target add wasm32-unknown-unknown
fi
cargo build --quiet --release --target wasm32-unknown-unknown --manifest-path Cargo.toml
for m in wordcount testops; do
  cp "${CARGO_TARGET_DIR:-$here/target}/wasm32-unknown-unknown/release/$m.wasm" "$here/$m.wasm"
done

# C guest: freestanding wasm32, no libc, no imports.
if command -v clang >/dev/null 2>&1 && command -v wasm-ld >/dev/null 2>&1; then
  clang --target=wasm32 -O2 -nostdlib -ffreestanding -Wall -Werror \
    -Wl,--no-entry -Wl,--export-dynamic -Wl,--strip-all \
    -o "$here/wordcount_c.wasm" c/wordcount.c
  # The rest of weir_abi.h's record helpers (tests/udf_dev.rs).
  clang --target=wasm32 -O2 -nostdlib -ffreestanding -Wall -Werror \
    -Wl,--no-entry -Wl,--export-dynamic -Wl,--strip-all \
    -o "$here/c_helpers.wasm" c/helpers.c
else
  # Not fatal: the examples need only the Rust modules. The tests need this
  # one and say so; scripts/test.sh installs clang and lld first.
  echo "udfs/build.sh: skipping the C guest (udfs/c/): clang and wasm-ld not found (Debian: apt-get install clang lld)" >&2
fi
echo "built: $(cd "$here" && ls *.wasm | tr '\n' ' ')"
