#!/usr/bin/env bash
# The README's first command: from a fresh clone, build the UDFs (installing
# the wasm32 target if needed) and the engine, then run WordCount over the
# text files in examples/data/ (no second terminal needed).
set -euo pipefail
cd "$(dirname "$0")/.."
bash udfs/build.sh
cargo build --release -p weir-cli
exec ./target/release/weir run examples/file_wordcount.toml --clock logical --batches 1 "$@"
