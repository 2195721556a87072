#!/usr/bin/env bash
# Builds every UDF module the examples and tests use into udfs/*.wasm:
#   Rust (udf-sdk)  -> udfs/wordcount.wasm, udfs/testops.wasm
#   C (clang)       -> udfs/wordcount_c.wasm, udfs/c_helpers.wasm
#   AssemblyScript  -> udfs/wordcount_as.wasm (npm's assemblyscript, installed
#                      under target/assemblyscript when missing)
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
# AssemblyScript guest (udf-sdk/assemblyscript): the compiler from npm, pinned,
# installed under the target directory; `--use abort=` drops the env.abort
# import. AssemblyScript cannot name an export "flat_map:split", so the kinds
# go into the module's weir:exports section (declare.cjs).
as_dir="${CARGO_TARGET_DIR:-$here/target}/assemblyscript"
asc="$as_dir/node_modules/.bin/asc"
if command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1; then
  if [ ! -x "$asc" ]; then
    mkdir -p "$as_dir"
    (cd "$as_dir" && npm install --no-audit --no-fund --silent assemblyscript@0.28.20 >&2)
  fi
  "$asc" assemblyscript/wordcount.ts --runtime stub --use abort= -O3 --noAssert -o "$here/wordcount_as.wasm"
  node ../udf-sdk/assemblyscript/declare.cjs "$here/wordcount_as.wasm" assemblyscript/wordcount.exports
else
  echo "udfs/build.sh: skipping the AssemblyScript guest (udfs/assemblyscript/): node and npm not found (Debian: apt-get install nodejs npm)" >&2
fi
echo "built: $(cd "$here" && ls *.wasm | tr '\n' ' ')"
