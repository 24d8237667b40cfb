#!/usr/bin/env bash
# Linear probe on GPT features (layer n_layer/2, null class, mean over positions). Example:
#   GPUS=8 bash scripts/train_lin_probe_gpt.sh --data-path $IMGNET_ROOT --tok-config configs/vq/VQ_XLXXL256.yaml \
#     --vq-ckpt VQ_XLXXL256_e300.pt --gpt-model GPT-B --gpt-ckpt GPT_B256_e300_VQ_XLXXL.pt \
#     --save-path results/lin_probe_gpt --sub-exp-dir B_XLXXL --batch-size 128 --global-batch-size 8192 \
#     --ckpt-epoch 5 --mixed-precision fp16
# (8192 = the published 128 x 64 GPUs, reached on any GPUS by gradient accumulation; without it: batch x GPUS)
# Flags: python -m autoregressive.lin_probe --help
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
launch autoregressive.lin_probe "$@"
