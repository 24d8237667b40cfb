#!/usr/bin/env bash
# Decode a few extracted code files back to a PNG grid. Example:
#   bash scripts/check_code_c2i.sh --code-path results/codes/ten_crop --model-config CFG --vq-ckpt CKPT --out check.png
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
exec "$PYTHON" -m autoregressive.check_codes "$@"
