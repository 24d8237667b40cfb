#!/usr/bin/env bash
# The browser demo: installs the demo extra (gradio, matplotlib) with env_install.sh --demo, then serves the page
# (python -m autoregressive.demo) and prints its local URL. Offline on a CPU it shows the quickstart's tiny models
# (results/quickstart: run `bash scripts/quickstart.sh` first, or press the page's button to make them).
#
#   bash scripts/demo.sh [--port 7860] [--host 127.0.0.1] [--device auto] [--quickstart DIR] [--no-released] ...
#
# Every flag goes to python -m autoregressive.demo (`bash scripts/demo.sh --help` lists them). Stop with Ctrl+C.
# Env: GIGATOK_DRY_RUN=1 prints the command instead of installing and running it.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
if [[ "${GIGATOK_DRY_RUN:-0}" != "1" ]]; then
  bash env_install.sh --demo
fi
source scripts/common.sh  # PYTHON, PYTHONPATH and launch
export GRADIO_ANALYTICS_ENABLED=${GRADIO_ANALYTICS_ENABLED:-False}
launch autoregressive.demo "$@"
