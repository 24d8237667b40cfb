#!/usr/bin/env bash
# Validation cross-entropy of a GPT checkpoint on a held-out image folder (tokenised on the fly) or code folder.
# Example:
#   GPUS=8 bash scripts/val_loss_c2i.sh --data-path $IMGNET_ROOT/ILSVRC2012_img_val/ \
#     --tok-config configs/vq/VQ_XLXXL256.yaml --vq-ckpt VQ_XLXXL256_e300.pt --gpt-model GPT-B \
#     --gpt-ckpt results/gpt/GPT_B_on_XLXXL/cd_records/cd_fract_0.2_to_1500000/checkpoints/1500000.pt \
#     --per-proc-batch-size 32 --precision bf16
# Appends to <run>/val_results.json and <run>/val_results.txt (<run> = the folder above checkpoints/).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
launch autoregressive.val_loss "$@"
