#!/usr/bin/env bash
# Train a tokenizer, evaluate its reconstructions (rFID, rsFID, PSNR, SSIM, LPIPS), then the AR probe: GPT-B trained
# on its codes (constant LR after no warm-up, stopped at 250k of 1.5M iterations) with gFID at the constant CFG
# schedule and the validation loss, as the original's script.
# Variables: tok_common.sh (VQ_EXP_DIR, TOK_CONFIG, TOK_EPOCH (100), TOK_BSZ, TOK_EARLY_STOP_ITER), CKPT_EPOCH
# (--ckpt-every, 5000), PRECISION (fp16), LM_PRECISION (fp16), LM_EXP_DIR, DATASET, VAL_PATH
# (results/reconstructions/img_data), GT_VAL_NPZ_PATH (results/reconstructions/img_data/val_imagenet.npz: where
# `bash scripts/val.sh --sample-dir results/reconstructions/img_data` writes it), GT_NPZ_PATH (the AR probe's gFID
# reference), and lm_common.sh's. Both reference batches are checked before the tokenizer training starts.
TOK_EPOCH=${TOK_EPOCH:-100}
VQ_TRAIN_SCRIPT=${VQ_TRAIN_SCRIPT:-train_vq.sh}  # train_vq_and_eval_fsdp.sh sets train_vq_fsdp.sh
VQ_CKPT=None  # the checkpoint of the run trained here
source "$(dirname "${BASH_SOURCE[0]}")/tok_common.sh"
CKPT_EVERY=${CKPT_EVERY:-5000}
PRECISION=${PRECISION:-fp16}
LM_PRECISION=${LM_PRECISION:-fp16}
DATASET=${DATASET:-imagenet}
FRACT_DECAY=${FRACT_DECAY:-0.2}
TOTAL_ITER=$((TOK_EPOCH * 256 * 5000 / TOK_BSZ))
STOP=()
[[ "$TOK_EARLY_STOP_ITER" != "None" ]] && STOP=(--early-stop-iter "$TOK_EARLY_STOP_ITER")
EXTRA=()
[[ "$VQ_TRAIN_SCRIPT" == "train_vq_fsdp.sh" ]] && EXTRA=(--grad-precision "$PRECISION" --fract-decay "$FRACT_DECAY")
VAL_PATH=${VAL_PATH:-${PROJECT_ROOT}/results/reconstructions/img_data}
GT_VAL_NPZ_PATH=${GT_VAL_NPZ_PATH:-${PROJECT_ROOT}/results/reconstructions/img_data/val_imagenet.npz}
# rFID is against the val reference in both variants (the original's FSDP script passes GT_NPZ_PATH, which it never
# sets: Detailed_instructions.md, differences)
require_reference GT_VAL_NPZ_PATH "the rFID reference batch of ImageNet val; make it with bash scripts/val.sh \
--data-path \$IMGNET_ROOT/ILSVRC2012_img_val --sample-dir results/reconstructions/img_data"
require_gfid_reference

bash "$SCRIPTS/$VQ_TRAIN_SCRIPT" --save-path "${PROJECT_ROOT}/results/tokenizers/vq/" \
  --data-path "${IMGNET_ROOT}/ILSVRC2012_img_train/" --image-size 256 --model-config "$TOK_CONFIG" \
  --mixed-precision "$PRECISION" "${EXTRA[@]}" --iterations "$TOTAL_ITER" --global-batch-size "$TOK_BSZ" \
  --ckpt-every "$CKPT_EVERY" --sub-exp-dir "$VQ_EXP_DIR" --dataset "$DATASET" "${STOP[@]}"

bash "$SCRIPTS/reconstruction.sh" --data-path "$VAL_PATH" --image-size 256 --quant-way vq \
  --sample-dir "${PROJECT_ROOT}/results/reconstructions/vq/${VQ_EXP_DIR}/${TOK_ITER}" --vq-ckpt "$VQ_CKPT" \
  --model-config "$TOK_CONFIG" --clear-cache --lpips --gt-npz-path "$GT_VAL_NPZ_PATH"

# the AR probe (the original's recipe for comparing tokenizers)
VQ_CKPT=$VQ_CKPT GT_NPZ_PATH=$GT_NPZ_PATH LM_EPOCH=300 LM_BSZ=256 GPT_MODEL=GPT-B WARM_ITER=0 LR=1e-4 \
  PRECISION=$LM_PRECISION CFG_SCHEDULE=constant LM_STOP_ITER=${LM_STOP_ITER:-250000} \
  bash "$(dirname "${BASH_SOURCE[0]}")/train_c2i_and_eval.sh"
