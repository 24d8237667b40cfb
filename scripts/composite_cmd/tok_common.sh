#!/usr/bin/env bash
# Sourced by the composite scripts: the tokenizer experiment's variables and checkpoint, as the original.
#   VQ_CKPT (default: results/tokenizers/vq/$VQ_EXP_DIR/checkpoints/$TOK_ITER.pt), TOK_CONFIG, VQ_EXP_DIR,
#   TOK_EPOCH (50), TOK_BSZ (128), TOK_EARLY_STOP_ITER (None); TOK_ITER = TOK_EARLY_STOP_ITER, else
#   TOK_EPOCH * 256 * 5000 / TOK_BSZ ("epochs" of 5000 iterations at batch 256), zero-padded to 7 digits.
set -euo pipefail
SCRIPTS=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PROJECT_ROOT=${PROJECT_ROOT:-.}
IMGNET_ROOT=${IMGNET_ROOT:-}

VQ_CKPT=${VQ_CKPT:-None}
VQ_EXP_DIR=${VQ_EXP_DIR:-}
TOK_CONFIG=${TOK_CONFIG:?set TOK_CONFIG to the tokenizer YAML}
TOK_EPOCH=${TOK_EPOCH:-50}
TOK_BSZ=${TOK_BSZ:-128}
TOK_EARLY_STOP_ITER=${TOK_EARLY_STOP_ITER:-None}

if [[ "$TOK_EARLY_STOP_ITER" != "None" ]]; then
  TOK_ITER=$TOK_EARLY_STOP_ITER
else
  TOK_ITER=$((TOK_EPOCH * 256 * 5000 / TOK_BSZ))
fi
printf -v TOK_ITER "%07d" "$((10#$TOK_ITER))"
if [[ "$VQ_CKPT" == "None" ]]; then
  VQ_CKPT=${PROJECT_ROOT}/results/tokenizers/vq/${VQ_EXP_DIR}/checkpoints/${TOK_ITER}.pt
fi
