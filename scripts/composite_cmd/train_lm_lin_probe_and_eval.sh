#!/usr/bin/env bash
# Linear probe on a GPT's features (the paper's "Acc."): train 90 epochs, then evaluate, as the original's script.
# Variables: tok_common.sh, lm_common.sh (GPT_CKPT, or LM_EXP_DIR + LM_* for a run trained here), probe_common.sh
# (LM_LIN_EXP_DIR, ...). Example: GPUS=8 IMGNET_ROOT=/data/imagenet TOK_CONFIG=configs/vq/VQ_XLXXL256.yaml \
#   VQ_CKPT=VQ_XLXXL256_e300.pt GPT_CKPT=GPT_B256_e300_VQ_XLXXL.pt LM_LIN_EXP_DIR=B_XLXXL \
#   bash scripts/composite_cmd/train_lm_lin_probe_and_eval.sh
TOK_EPOCH=${TOK_EPOCH:-100}
PRECISION=${PRECISION:-none}
source "$(dirname "${BASH_SOURCE[0]}")/lm_common.sh"
source "$(dirname "${BASH_SOURCE[0]}")/probe_common.sh"
lm_probe
