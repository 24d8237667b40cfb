#!/usr/bin/env bash
# One command per published number (the README's model table), with the original's recipe:
#   bash scripts/reproduce.sh list
#   GPUS=8 bash scripts/reproduce.sh gfid/GPT-B_VQ_XLXXL [--search] [--dry-run]
#   bash scripts/reproduce.sh rfid/VQ_SS256 --tiny results/quickstart     # the same chain on the quickstart's models
# Writes results/reproduce/<row>.json (paper value, measured value, settings, versions, GPU, sha256s).
# Data: VAL_PATH, GT_VAL_NPZ_PATH, GT_NPZ_PATH, IMGNET_ROOT (see --help). Flags: python -m autoregressive.reproduce --help
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
exec "$PYTHON" -m autoregressive.reproduce "$@"
