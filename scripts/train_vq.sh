#!/usr/bin/env bash
# Train a GigaTok VQ tokenizer with DDP (one process per GPU; plain python when GPUS<=1).
# Example (8 GPUs, the README's VQ_BL256 recipe: 200 epochs at batch 256 = 1,000,000 iterations):
#   GPUS=8 bash scripts/train_vq.sh --data-path $IMGNET_ROOT/ILSVRC2012_img_train/ --model-config configs/vq/VQ_BL256.yaml \
#     --save-path results/tokenizers/vq/ --sub-exp-dir VQ_BL256 --iterations 1000000 --global-batch-size 256 \
#     --mixed-precision fp16 --ckpt-every 5000
# Multi-node: NNODES, NODE_RANK, MASTER_ADDR, PORT as for torchrun (see scripts/common.sh). Dotted config overrides go
# after --config-overrides (e.g. trainer.lr=2e-4). Re-running the same command resumes from the newest checkpoint.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
launch tokenizer.train "$@"
