#!/usr/bin/env bash
# Train a large GigaTok tokenizer (XL-XXL) with FSDP2: every transformer block is its own fully_shard unit.
# Example (the README's VQ_XLXXL256 recipe: 300 epochs at batch 256 = 1,500,000 iterations, bf16):
#   GPUS=8 NNODES=4 NODE_RANK=$RANK MASTER_ADDR=$ADDR bash scripts/train_vq_fsdp.sh \
#     --data-path $IMGNET_ROOT/ILSVRC2012_img_train/ --model-config configs/vq/VQ_XLXXL256.yaml \
#     --save-path results/tokenizers/vq/ --sub-exp-dir VQ_XLXXL256 --iterations 1500000 --global-batch-size 256 \
#     --mixed-precision bf16 --grad-precision bf16 --ckpt-every 5000
# Pass --data-parallel sdp (keep parameters gathered between forward and backward) or hsdp (shard within a node,
# replicate across nodes) to override the default full sharding.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
launch tokenizer.train --data-parallel fsdp "$@"
