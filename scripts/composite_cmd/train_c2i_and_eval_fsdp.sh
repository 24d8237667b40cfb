#!/usr/bin/env bash
# As train_c2i_and_eval.sh, with FSDP2 training (DATA_PARALLEL: sdp (default), fsdp or hsdp) for large GPTs.
# The search always uses the step CFG schedule, as the original. Example (Detailed_instructions: GPT-XXL):
#   GPUS=8 NNODES=4 NODE_RANK=$RANK MASTER_ADDR=$ADDR GPT_MODEL=GPT-XXL LM_BSZ=512 WARM_ITER=200 \
#   TOK_CONFIG=configs/vq/VQ_XLXXL256.yaml VQ_CKPT=VQ_XLXXL256_e300.pt LM_EXP_DIR=GPT_XXL_on_XLXXL \
#   bash scripts/composite_cmd/train_c2i_and_eval_fsdp.sh
EVAL_BATCH_PER_GPU=${EVAL_BATCH_PER_GPU:-16}
CFG_SCHEDULE=step
source "$(dirname "${BASH_SOURCE[0]}")/lm_common.sh"
require_gfid_reference
train_lm train_c2i_fsdp.sh
sample_fid --search
val_loss
