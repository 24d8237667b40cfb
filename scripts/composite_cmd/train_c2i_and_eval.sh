#!/usr/bin/env bash
# Train a GPT with the WSD schedule (DDP), then gFID with a CFG-scale search, then the validation loss.
# Environment variables: see scripts/composite_cmd/lm_common.sh. Example (GPT-B on the released XL-XXL tokenizer):
#   GPUS=8 IMGNET_ROOT=/data/imagenet TOK_CONFIG=configs/vq/VQ_XLXXL256.yaml VQ_CKPT=VQ_XLXXL256_e300.pt \
#   LM_EXP_DIR=GPT_B_on_XLXXL GT_NPZ_PATH=VIRTUAL_imagenet256_labeled.npz bash scripts/composite_cmd/train_c2i_and_eval.sh
EVAL_BATCH_PER_GPU=${EVAL_BATCH_PER_GPU:-32}
source "$(dirname "${BASH_SOURCE[0]}")/lm_common.sh"
require_gfid_reference
train_lm train_c2i.sh
sample_fid --search
val_loss
