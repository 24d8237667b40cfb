#!/usr/bin/env bash
# Sourced by the composite LM scripts: the original's environment variables, iteration budget and checkpoint paths.
#
# Tokenizer: VQ_CKPT (default: results/tokenizers/vq/$VQ_EXP_DIR/checkpoints/$TOK_ITER.pt with
#   TOK_ITER = TOK_EARLY_STOP_ITER, else TOK_EPOCH * 256 * 5000 / TOK_BSZ), TOK_CONFIG, VQ_EXP_DIR, TOK_EPOCH (50),
#   TOK_BSZ (128), TOK_EARLY_STOP_ITER (None)
# GPT: LM_EXP_DIR, GPT_MODEL (GPT-B), LM_EPOCH (300), LM_BSZ (256), LM_ITER (default LM_EPOCH * 256 * 5000 / LM_BSZ),
#   LM_STOP_ITER (= LM_ITER), FRACT_DECAY (0.2), WARM_ITER (5000), LR (1e-4), PRECISION (fp16), CKPT_EVERY (5000),
#   USE_QK_NORM (False), GPT_2D (False: the 2D-RoPE GPT for 2D tokenizers), DATASET (imagenet | imagenet_code),
#   DATAPATH, CODEPATH, GPT_CKPT (default: derived below)
# Evaluation: CFG_SCHEDULE (step), CFG_START_RATIO (0.18), EVAL_BATCH_PER_GPU, VAL_PATH
#   (IMGNET_ROOT/ILSVRC2012_img_val), VAL_CODE_PATH (held-out codes instead of images), GT_NPZ_PATH
#   (PROJECT_ROOT/VIRTUAL_imagenet256_labeled.npz, as the original; the scripts that compute a gFID check it before
#   they launch anything), EVAL_PYTHON_PATH, SKIP_FID (False), SKIP_VAL_LOSS (False)
# Paths: PROJECT_ROOT (.), IMGNET_ROOT, SAVE_PATH ($PROJECT_ROOT/results/gpt)
# Extra flags: TRAIN_EXTRA_ARGS, SAMPLE_EXTRA_ARGS, VAL_EXTRA_ARGS (word-split), e.g. TRAIN_EXTRA_ARGS="--ema".
set -euo pipefail
SCRIPTS=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

PROJECT_ROOT=${PROJECT_ROOT:-.}
IMGNET_ROOT=${IMGNET_ROOT:-}
SAVE_PATH=${SAVE_PATH:-${PROJECT_ROOT}/results/gpt}

source "$(dirname "${BASH_SOURCE[0]}")/tok_common.sh"

LM_EXP_DIR=${LM_EXP_DIR:-}
if [[ -z "$LM_EXP_DIR" && ( -z "${GPT_CKPT:-}" || "${GPT_CKPT:-}" == "None" ) ]]; then
  echo "set LM_EXP_DIR (the GPT experiment folder under SAVE_PATH) or GPT_CKPT" >&2
  exit 2
fi
GPT_MODEL=${GPT_MODEL:-GPT-B}
LM_EPOCH=${LM_EPOCH:-300}
LM_BSZ=${LM_BSZ:-256}
FRACT_DECAY=${FRACT_DECAY:-${LM_FRACT_DECAY:-0.2}}
WARM_ITER=${WARM_ITER:-5000}
LR=${LR:-1e-4}
PRECISION=${PRECISION:-fp16}
CKPT_EVERY=${CKPT_EVERY:-5000}
DATASET=${DATASET:-imagenet}
DATAPATH=${DATAPATH:-${IMGNET_ROOT}/ILSVRC2012_img_train/}
CODEPATH=${CODEPATH:-None}
CFG_SCHEDULE=${CFG_SCHEDULE:-step}
CFG_START_RATIO=${CFG_START_RATIO:-0.18}
VAL_PATH=${VAL_PATH:-${IMGNET_ROOT}/ILSVRC2012_img_val/}
VAL_CODE_PATH=${VAL_CODE_PATH:-}
EVAL_PYTHON_PATH=${EVAL_PYTHON_PATH:-}
SKIP_FID=${SKIP_FID:-False}
SKIP_VAL_LOSS=${SKIP_VAL_LOSS:-False}
read -r -a TRAIN_EXTRA <<< "${TRAIN_EXTRA_ARGS:-}"
read -r -a SAMPLE_EXTRA <<< "${SAMPLE_EXTRA_ARGS:-}"
read -r -a VAL_EXTRA <<< "${VAL_EXTRA_ARGS:-}"

GPT_FLAGS=()
[[ "${USE_QK_NORM:-False}" == "True" ]] && GPT_FLAGS+=(--qk-norm)
[[ "${GPT_2D:-False}" == "True" ]] && GPT_FLAGS+=(--gpt-2d)
if [[ "${USE_ADALN:-False}" != "False" ]]; then
  echo "USE_ADALN: the adaLN GPT variant is not implemented (no released GPT uses it)" >&2
  exit 2
fi

# one "epoch" = 256 * 5000 / batch iterations (ImageNet at batch 256 has 5004 steps per epoch)
LM_ITER=${LM_ITER:-$((LM_EPOCH * 256 * 5000 / LM_BSZ))}
LM_STOP_ITER=${LM_STOP_ITER:-$LM_ITER}
printf -v LM_ITER "%07d" "$((10#$LM_ITER))"
printf -v LM_STOP_ITER "%07d" "$((10#$LM_STOP_ITER))"

# the checkpoint to evaluate: the early-stop one in the constant phase, else the end of the cool-down
LM_EVAL_ITER=$LM_ITER
if [[ -z "${GPT_CKPT:-}" || "${GPT_CKPT}" == "None" ]]; then
  if (( 10#$LM_STOP_ITER < 10#$LM_ITER )); then
    GPT_CKPT=${SAVE_PATH}/${LM_EXP_DIR}/checkpoints/${LM_STOP_ITER}.pt
    LM_EVAL_ITER=$LM_STOP_ITER
  else
    GPT_CKPT=${SAVE_PATH}/${LM_EXP_DIR}/cd_records/cd_fract_${FRACT_DECAY}_to_${LM_ITER}/checkpoints/${LM_ITER}.pt
  fi
fi
echo "tokenizer: $VQ_CKPT; GPT iterations: $LM_ITER (stop at $LM_STOP_ITER); GPT checkpoint: $GPT_CKPT"

train_lm() {  # train_lm ENTRY_SCRIPT
  local data=(--dataset "$DATASET")
  if [[ "$DATASET" == "imagenet_code" ]]; then data+=(--code-path "$CODEPATH"); else data+=(--data-path "$DATAPATH"); fi
  bash "$SCRIPTS/$1" "${data[@]}" --save-path "$SAVE_PATH" --tok-config "$TOK_CONFIG" --vq-ckpt "$VQ_CKPT" \
    --mixed-precision "$PRECISION" --gpt-model "$GPT_MODEL" --sub-exp-dir "$LM_EXP_DIR" --lr-scheduler wsd \
    --warmup "$WARM_ITER" --lr "$LR" --ckpt-every "$CKPT_EVERY" --global-batch-size "$LM_BSZ" \
    --fract-decay "$FRACT_DECAY" --iterations "$((10#$LM_ITER))" --early-stop-iter "$((10#$LM_STOP_ITER))" \
    "${GPT_FLAGS[@]}" "${TRAIN_EXTRA[@]}"
}

sample_fid() {  # sample_fid EXTRA_FLAGS... : 50k samples + ADM evaluator via the sampling script
  [[ "$SKIP_FID" == "True" ]] && { echo "SKIP_FID=True: no sampling / gFID"; return 0; }
  local eval=(--gt-npz-path "$GT_NPZ_PATH")
  [[ -n "$EVAL_PYTHON_PATH" ]] && eval+=(--eval-python-path "$EVAL_PYTHON_PATH")
  bash "$SCRIPTS/sample_c2i_search_cfg.sh" --quant-way vq \
    --sample-dir "${PROJECT_ROOT}/results/gpt/quan_eval/${LM_EXP_DIR}/${LM_EVAL_ITER}" --vq-ckpt "$VQ_CKPT" \
    --tok-config "$TOK_CONFIG" --gpt-model "$GPT_MODEL" --gpt-ckpt "$GPT_CKPT" --cfg-schedule "$CFG_SCHEDULE" \
    --step-start-ratio "$CFG_START_RATIO" --per-proc-batch-size "$EVAL_BATCH_PER_GPU" --precision "$PRECISION" \
    --clear-cache "${eval[@]}" "${GPT_FLAGS[@]}" "$@" "${SAMPLE_EXTRA[@]}"
}

val_loss() {
  [[ "$SKIP_VAL_LOSS" == "True" ]] && { echo "SKIP_VAL_LOSS=True: no validation loss"; return 0; }
  local data=()
  if [[ -n "$VAL_CODE_PATH" ]]; then data+=(--code-path "$VAL_CODE_PATH"); else data+=(--data-path "$VAL_PATH"); fi
  bash "$SCRIPTS/val_loss_c2i.sh" "${data[@]}" --quant-way vq --vq-ckpt "$VQ_CKPT" --tok-config "$TOK_CONFIG" \
    --gpt-model "$GPT_MODEL" --per-proc-batch-size "$EVAL_BATCH_PER_GPU" --gpt-ckpt "$GPT_CKPT" \
    --precision "$PRECISION" "${GPT_FLAGS[@]}" "${VAL_EXTRA[@]}"
}
