#!/usr/bin/env bash
# Evaluate a trained GPT: gFID at a fixed CFG (CFG_SCALE, CFG_SCHEDULE, CFG_START_RATIO, TOP_K), then the
# validation loss. VAL_ONLY=True skips the gFID. GPT_CKPT defaults to the checkpoint the WSD layout implies
# (see lm_common.sh). Example:
#   GPUS=8 TOK_CONFIG=configs/vq/VQ_XLXXL256.yaml VQ_CKPT=VQ_XLXXL256_e300.pt GPT_CKPT=GPT_B256_e300_VQ_XLXXL.pt \
#   LM_EXP_DIR=GPT_B_on_XLXXL CFG_SCALE=1.75 PRECISION=none bash scripts/composite_cmd/eval_c2i.sh
EVAL_BATCH_PER_GPU=${EVAL_BATCH_PER_GPU:-16}
TOK_EPOCH=${TOK_EPOCH:-100}
CFG_SCALE=${CFG_SCALE:-1.0}
TOP_K=${TOP_K:-0}
[[ "${VAL_ONLY:-False}" != "False" ]] && SKIP_FID=True
source "$(dirname "${BASH_SOURCE[0]}")/lm_common.sh"
require_gfid_reference
sample_fid --cfg-scale "$CFG_SCALE" --top-k "$TOP_K"
val_loss
