#!/usr/bin/env bash
# Installs the servers the end-to-end tests run against, cached under
# target/test-servers (or $WEIR_TEST_SERVERS): the S3 server mode of the
# PyPI package moto (tests/object_store.rs). A no-op once installed.
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${WEIR_TEST_SERVERS:-target/test-servers}"
if [ -d "$dir/py/moto" ] && [ -d "$dir/py/boto3" ]; then
  exit 0
fi
command -v python3 >/dev/null 2>&1 || { echo "scripts/test-servers.sh: python3 is needed" >&2; exit 1; }
echo "scripts/test-servers.sh: installing moto[server] into $dir/py" >&2
mkdir -p "$dir"
# Into a temporary folder first: an interrupted install is never taken for a cached one.
rm -rf "$dir/py.tmp"
python3 -m pip install --quiet --disable-pip-version-check --no-warn-conflicts --target "$dir/py.tmp" 'moto[server]==5.2.5'
rm -rf "$dir/py"
mv "$dir/py.tmp" "$dir/py"
