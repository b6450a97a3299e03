#!/usr/bin/env bash
# The environment of bench/predict.py's Optimum arms: optimum-onnx (Optimum's ONNX Runtime models and
# quantizer) needs transformers < 4.58, and finsent runs on transformers 5, so they cannot share a venv.
# This makes bench/.venv-optimum with optimum-onnx and its transformers, sharing the project venv's torch,
# numpy and pandas (a .pth line puts that venv's site-packages after its own), so nothing large is
# downloaded twice and both environments run the same torch build.
#   VENV=.venv (the project's venv)   OPTIMUM_VENV=bench/.venv-optimum
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
OPTIMUM_VENV=${OPTIMUM_VENV:-bench/.venv-optimum}
[ -x "$VENV/bin/python" ] || { echo "$0: no project venv at $VENV; run \`make install\` first" >&2; exit 1; }
base_site=$("$VENV/bin/python" -c "import site; print(site.getsitepackages()[0])")
python3 -m venv "$OPTIMUM_VENV"
own_site=$("$OPTIMUM_VENV/bin/python" -c "import site; print(site.getsitepackages()[0])")
echo "$base_site" > "$own_site/zz_finsent_base.pth"   # zz: after the venv's own packages
# pip then warns that finsent and datasets (in the shared site-packages) want transformers 5: expected here
"$OPTIMUM_VENV/bin/python" -m pip install -q "optimum-onnx[onnxruntime]==0.1.0" "transformers>=4.57,<4.58"
"$OPTIMUM_VENV/bin/python" -c "import optimum.onnxruntime, transformers, torch; \
print(f'optimum env: transformers {transformers.__version__}, torch {torch.__version__}')"
