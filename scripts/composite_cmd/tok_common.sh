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

# The reference batches are read only by the evaluation at the end of a chain: check them before anything is
# launched (also under GIGATOK_DRY_RUN=1), so a missing file is one message now rather than a failure after the
# training. GT_NPZ_PATH defaults to the original's fallback (PROJECT_ROOT/VIRTUAL_imagenet256_labeled.npz).
ADM_REF_URL=https://openaipublic.blob.core.windows.net/diffusion/jul-2021/ref_batches/imagenet/256/VIRTUAL_imagenet256_labeled.npz
GT_NPZ_PATH=${GT_NPZ_PATH:-${PROJECT_ROOT}/VIRTUAL_imagenet256_labeled.npz}
require_reference() {  # require_reference VARIABLE WHAT_IT_IS_AND_WHERE_TO_GET_IT
  local path=${!1}
  if [[ ! -f "$path" ]]; then
    echo "error: $1=$path is not a file: $2. Nothing was launched." >&2
    exit 2
  fi
}
require_gfid_reference() {  # unless SKIP_FID=True: the gFID step's reference batch
  [[ "${SKIP_FID:-False}" == "True" ]] && return 0
  require_reference GT_NPZ_PATH "the gFID reference batch, ADM's VIRTUAL_imagenet256_labeled.npz ($ADM_REF_URL); \
set GT_NPZ_PATH to it, or SKIP_FID=True to skip the gFID"
}
