#!/usr/bin/env bash
# Sourced by the linear-probe composite scripts: the original's probe recipe (90 epochs, blr 0.1, evaluation of the
# epoch-89 checkpoint), its variables, and one function per probe.
#   LIN_BSZ (128 per process: the batch of each BatchNorm), LIN_GLOBAL_BSZ (8192 = 128 x 64 GPUs, the global batch of
#   the original's comment "we use 128*64 global batch size", on any number of processes by gradient accumulation;
#   None = LIN_BSZ x processes, what the original's launcher gives), CKPT_EPOCH (5), NUM_CODE (256), PRECISION
#   (none), TOK_PRECISION / LM_PRECISION (default PRECISION), TOK_LIN_EXP_DIR, LM_LIN_EXP_DIR, FIX_DIM /
#   FROM_DECODER (False), IMGNET_ROOT, PROJECT_ROOT
LIN_BSZ=${LIN_BSZ:-128}
LIN_GLOBAL_BSZ=${LIN_GLOBAL_BSZ:-8192}
GLOBAL_BSZ_FLAG=()
[[ "$LIN_GLOBAL_BSZ" != "None" ]] && GLOBAL_BSZ_FLAG=(--global-batch-size "$LIN_GLOBAL_BSZ")
CKPT_EPOCH=${CKPT_EPOCH:-5}
NUM_CODE=${NUM_CODE:-256}
PRECISION=${PRECISION:-none}
TOK_PRECISION=${TOK_PRECISION:-$PRECISION}
LM_PRECISION=${LM_PRECISION:-$PRECISION}
PROBE_EPOCHS=90
LAST_PROBE_CKPT=$(printf "%04d.pt" $((PROBE_EPOCHS - 1)))

tok_probe() {  # train, then evaluate, the linear probe on tokenizer features
  local exp=${TOK_LIN_EXP_DIR:?set TOK_LIN_EXP_DIR} flags=()
  [[ "${FIX_DIM:-False}" == "True" ]] && flags+=(--fix-dim)
  [[ "${FROM_DECODER:-False}" == "True" ]] && flags+=(--from-decoder)
  local common=(--save-path "${PROJECT_ROOT}/results/lin_probe/" --data-root "$IMGNET_ROOT" --image-size 256
                --model-config "$TOK_CONFIG" --epochs "$PROBE_EPOCHS" --blr 0.1 --sub-exp-dir "$exp"
                --batch-size "$LIN_BSZ" "${GLOBAL_BSZ_FLAG[@]}" --mixed-precision "$TOK_PRECISION"
                --num-code "$NUM_CODE" --ckpt-epoch "$CKPT_EPOCH" --vq-ckpt "$VQ_CKPT" "${flags[@]}")
  bash "$SCRIPTS/train_lin_probe.sh" "${common[@]}"
  bash "$SCRIPTS/train_lin_probe.sh" "${common[@]}" --eval \
    --lin-probe-ckpt "${PROJECT_ROOT}/results/lin_probe/${exp}/checkpoints/${LAST_PROBE_CKPT}"
}

lm_probe() {  # train, then evaluate, the linear probe on GPT features (needs lm_common.sh for GPT_CKPT)
  local exp=${LM_LIN_EXP_DIR:?set LM_LIN_EXP_DIR}
  local common=(--save-path "${PROJECT_ROOT}/results/lin_probe_gpt/" --data-root "$IMGNET_ROOT" --image-size 256
                --model-config "$TOK_CONFIG" --gpt-model "$GPT_MODEL" --epochs "$PROBE_EPOCHS" --blr 0.1
                --sub-exp-dir "$exp" --batch-size "$LIN_BSZ" "${GLOBAL_BSZ_FLAG[@]}"
                --mixed-precision "$LM_PRECISION" --num-code "$NUM_CODE" --vq-ckpt "$VQ_CKPT"
                --ckpt-epoch "$CKPT_EPOCH" --gpt-ckpt "$GPT_CKPT" "${GPT_FLAGS[@]}")
  bash "$SCRIPTS/train_lin_probe_gpt.sh" "${common[@]}"
  bash "$SCRIPTS/train_lin_probe_gpt.sh" "${common[@]}" --eval \
    --lin-probe-ckpt "${PROJECT_ROOT}/results/lin_probe_gpt/${exp}/checkpoints/${LAST_PROBE_CKPT}"
}
