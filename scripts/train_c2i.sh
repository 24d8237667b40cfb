#!/usr/bin/env bash
# Train a class-conditional GPT on GigaTok tokens with DDP (one process per GPU; plain python when GPUS<=1).
# Example (the released GPT-B recipe: 300 epochs at batch 256 = 1,500,000 iterations, WSD with a 20% cool-down):
#   GPUS=8 bash scripts/train_c2i.sh --data-path $IMGNET_ROOT/ILSVRC2012_img_train/ --dataset imagenet \
#     --tok-config configs/vq/VQ_XLXXL256.yaml --vq-ckpt VQ_XLXXL256_e300.pt --gpt-model GPT-B \
#     --save-path results/gpt/ --sub-exp-dir GPT_B_on_XLXXL --lr-scheduler wsd --warmup 5000 --lr 1e-4 \
#     --fract-decay 0.2 --iterations 1500000 --global-batch-size 256 --mixed-precision fp16 --ckpt-every 5000
# Pre-extracted codes (scripts/extract_code_c2i.sh): --dataset imagenet_code --code-path CODES/ten_crop/
# Multi-node: NNODES, NODE_RANK, MASTER_ADDR, PORT as for torchrun (scripts/common.sh). Re-running the same command
# resumes from the newest checkpoint; a longer --iterations branches a new cool-down from the constant run.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
launch autoregressive.train_c2i "$@"
