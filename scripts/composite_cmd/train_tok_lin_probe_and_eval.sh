#!/usr/bin/env bash
# Linear probe on a tokenizer's features (train 90 epochs, then evaluate), as the original's script.
# Variables: scripts/composite_cmd/tok_common.sh (VQ_CKPT or VQ_EXP_DIR + TOK_*), probe_common.sh (TOK_LIN_EXP_DIR,
# LIN_BSZ, ...). Example: GPUS=8 IMGNET_ROOT=/data/imagenet TOK_CONFIG=configs/vq/VQ_BL256.yaml \
#   VQ_CKPT=VQ_BL256_e200.pt TOK_LIN_EXP_DIR=VQ_BL256 bash scripts/composite_cmd/train_tok_lin_probe_and_eval.sh
TOK_EPOCH=${TOK_EPOCH:-50}
source "$(dirname "${BASH_SOURCE[0]}")/tok_common.sh"
source "$(dirname "${BASH_SOURCE[0]}")/probe_common.sh"
tok_probe
