#!/usr/bin/env bash
# Builds every UDF module the examples and tests use into udfs/*.wasm:
#   Rust (udf-sdk)  -> udfs/wordcount.wasm, udfs/testops.wasm
#   C (clang)       -> udfs/wordcount_c.wasm, udfs/c_helpers.wasm, udfs/c_params.wasm
#   AssemblyScript  -> udfs/wordcount_as.wasm, udfs/params_as.wasm (npm's assemblyscript, installed
#                      under target/assemblyscript when missing)
#   Zig             -> udfs/wordcount_zig.wasm, udfs/zig_helpers.wasm (PyPI's
#                      ziglang, installed under target/ziglang when missing)
#   Python          -> udfs/wordcount_py.wasm, udfs/hostile_py.wasm, udfs/params_py.wasm (components
#                      of ABI v2, by PyPI's componentize-py, installed under
#                      target/componentize-py when missing)
#   JavaScript      -> udfs/wordcount_js.wasm, udfs/hostile_js.wasm, udfs/params_js.wasm
#                      (components of ABI v2, by npm's componentize-js and rolldown, the
#                      versions of udf-sdk/js/package-lock.json, installed
#                      under target/componentize-js when missing or changed)
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
  # Parameters and the batch time (tests/udf_params.rs).
  clang --target=wasm32 -O2 -nostdlib -ffreestanding -Wall -Werror \
    -Wl,--no-entry -Wl,--export-dynamic -Wl,--strip-all \
    -o "$here/c_params.wasm" c/params.c
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
  for m in wordcount:wordcount_as params:params_as; do
    "$asc" "assemblyscript/${m%%:*}.ts" --runtime stub --use abort= -O3 --noAssert -o "$here/${m#*:}.wasm"
    node ../udf-sdk/assemblyscript/declare.cjs "$here/${m#*:}.wasm" "assemblyscript/${m%%:*}.exports"
  done
else
  echo "udfs/build.sh: skipping the AssemblyScript guest (udfs/assemblyscript/): node and npm not found (Debian: apt-get install nodejs npm)" >&2
fi
# Zig guests (udf-sdk/zig/weir.zig): the compiler from PyPI's ziglang wheel,
# pinned, installed under the target directory (its cache too, so nothing is
# written under udfs/ or the home directory). -fllvm: the SDK writes the
# weir:exports section with global assembly, which needs the LLVM backend;
# -rdynamic: keep the exported functions.
zig_dir="${CARGO_TARGET_DIR:-$here/target}/ziglang"
if command -v python3 >/dev/null 2>&1; then
  if ! "$zig_dir/ziglang/zig" version 2>/dev/null | grep -qx 0.17.0; then
    rm -rf "$zig_dir"
    python3 -m pip install --quiet --disable-pip-version-check --target "$zig_dir" ziglang==0.17.0 >&2
  fi
  for m in wordcount:wordcount_zig helpers:zig_helpers; do
    "$zig_dir/ziglang/zig" build-exe -target wasm32-freestanding -fno-entry -rdynamic -fllvm \
      -O ReleaseFast -fstrip --cache-dir "$zig_dir/cache" --global-cache-dir "$zig_dir/cache" \
      --dep weir "-Mroot=zig/${m%%:*}.zig" -Mweir=../udf-sdk/zig/weir.zig -femit-bin="$here/${m#*:}.wasm"
  done
else
  echo "udfs/build.sh: skipping the Zig guests (udfs/zig/): python3 not found (Debian: apt-get install python3 python3-pip)" >&2
fi
# Python guests (udf-sdk/python, ABI v2 components): componentize-py from PyPI,
# pinned, installed under the target directory. Each component embeds
# CPython (about 20 MB); a build takes about a minute, so it is skipped when
# the component is newer than its sources.
py_dir="${CARGO_TARGET_DIR:-$here/target}/componentize-py"
if command -v python3 >/dev/null 2>&1; then
  if [ ! -f "$py_dir/bin/componentize-py" ]; then
    python3 -m pip install --quiet --disable-pip-version-check --target "$py_dir" componentize-py==0.25.1 >&2
  fi
  # params takes the job file's parameters: the world with weir:udf/params.
  for m in wordcount hostile params; do
    out="$here/${m}_py.wasm"
    if [ -f "$out" ] && [ -z "$(find python/$m.py ../udf-sdk/python ../udf-sdk/wit "$py_dir/bin" -newer "$out" -type f 2>/dev/null)" ]; then
      continue
    fi
    world=guest
    if [ "$m" = params ]; then world=guest-with-params; fi
    PYTHONPATH="$py_dir" python3 "$py_dir/bin/componentize-py" -d ../udf-sdk/wit -w "$world" \
      componentize "$m" -p python -p ../udf-sdk/python -o "$out.tmp" >&2
    mv "$out.tmp" "$out"
  done
else
  echo "udfs/build.sh: skipping the Python guests (udfs/python/): python3 not found (Debian: apt-get install python3 python3-pip)" >&2
fi
# JavaScript guests (udf-sdk/js, ABI v2 components): the toolchain is the SDK's
# devDependencies, installed by `npm ci` from its lock file (exact versions
# and integrity hashes) and reinstalled when the lock file changes. Each
# component embeds SpiderMonkey (about 12 MB); a build takes about half a
# minute, so it is skipped when the component is newer than its sources.
js_dir="${CARGO_TARGET_DIR:-$here/target}/componentize-js"
if command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1; then
  if ! cmp -s ../udf-sdk/js/package-lock.json "$js_dir/package-lock.json" \
    || [ ! -d "$js_dir/node_modules/@bytecodealliance/componentize-js" ]; then
    mkdir -p "$js_dir"
    cp ../udf-sdk/js/package.json ../udf-sdk/js/package-lock.json "$js_dir/"
    (cd "$js_dir" && npm ci --no-audit --no-fund --silent >&2)
  fi
  # The SDK's own tests first (codec.js against a reference encoder, and
  # index.js's runners; a couple of seconds): a broken codec fails here,
  # before a minute of building components with it.
  node --test ../udf-sdk/js/codec.test.mjs >&2
  # The builds run side by side (each is mostly one single-threaded wizer
  # run); `wait PID` passes a failure on. params exports `params` too, so
  # build.mjs builds it for the world with weir:udf/params.
  pids=()
  for m in wordcount hostile params; do
    out="$here/${m}_js.wasm"
    if [ -f "$out" ] && [ -z "$(find js/$m.js ../udf-sdk/js ../udf-sdk/wit "$js_dir/package-lock.json" -newer "$out" -type f 2>/dev/null)" ]; then
      continue
    fi
    node ../udf-sdk/js/build.mjs "js/$m.js" -o "$out" --toolchain "$js_dir" >&2 &
    pids+=("$!")
  done
  for pid in "${pids[@]}"; do wait "$pid"; done
else
  echo "udfs/build.sh: skipping the JavaScript guests (udfs/js/): node and npm not found (Debian: apt-get install nodejs npm)" >&2
fi
echo "built: $(cd "$here" && ls *.wasm | tr '\n' ' ')"
