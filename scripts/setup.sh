#!/usr/bin/env bash
# Creates .venv and installs the project with its test tools. Safe to run again: it only
# installs what is missing. torch goes in first, pinned, so the project's torch range is
# already satisfied and pip never pulls a multi-GB CUDA build on a CPU machine; on a GPU
# host, install the CUDA build of torch you want into .venv first and this keeps it.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/python -m pip install --quiet "$TORCH_SPEC"
fi
# compat mode puts the repository on sys.path, so packages added later import without a reinstall
.venv/bin/python -m pip install --quiet -e '.[dev]' --config-settings editable_mode=compat
