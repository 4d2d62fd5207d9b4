#!/usr/bin/env bash
# The Jetson path without a Jetson: every runtime dependency of the node (and the PostgreSQL
# driver) must resolve to a binary wheel for linux aarch64 / CPython 3.10 (JetPack 6: Ubuntu
# 22.04, glibc 2.35), so `pip install` on the device never compiles. pip matches --platform tags
# exactly, so every manylinux tag that glibc 2.35 accepts is listed. Needs PyPI (a registry).
# Usage: deploy/check-aarch64-wheels.sh [PIP] (default .venv/bin/pip); prints the wheels chosen.
set -euo pipefail
cd "$(dirname "$0")/.."
PIP=${1:-.venv/bin/pip}
PYTHON_VERSION=${PYTHON_VERSION:-310}
GLIBC_MINOR=${GLIBC_MINOR:-35}
platforms=(--platform manylinux2014_aarch64 --platform linux_aarch64)
for minor in $(seq 17 "$GLIBC_MINOR"); do
  platforms+=(--platform "manylinux_2_${minor}_aarch64")
done
wheels=$(mktemp -d)
trap 'rm -rf "$wheels"' EXIT
# the project itself is built here (pure Python); everything it needs must be a wheel
"$PIP" wheel --quiet --no-deps --wheel-dir "$wheels/project" . >/dev/null
"$PIP" download --quiet --only-binary=:all: "${platforms[@]}" \
  --python-version "$PYTHON_VERSION" --implementation cp --dest "$wheels/deps" \
  "$(ls "$wheels"/project/*.whl)[postgres]" 2> >(grep -v "^WARNING: Location" >&2)
echo "linux aarch64, CPython ${PYTHON_VERSION:0:1}.${PYTHON_VERSION:1}, glibc <= 2.${GLIBC_MINOR}: every dependency is a wheel"
ls "$wheels/deps" | grep -v '^dicomnode-' | sed 's/^/  /'
