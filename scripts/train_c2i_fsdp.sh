#!/usr/bin/env bash
# Train a large GPT (XXL and up) with FSDP2: every transformer block is its own fully_shard unit.
# Default sharding as the original FSDP trainer: DATA_PARALLEL=sdp (parameters stay gathered between forward and
# backward, like SHARD_GRAD_OP); fsdp = reshard after forward (FULL_SHARD); hsdp = shard within a node, replicate
# across nodes. A later --data-parallel on the command line wins.
# Example (Detailed_instructions: GPT-XXL, batch 512, 300 epochs = 750,000 iterations, warmup 200):
#   GPUS=8 NNODES=4 NODE_RANK=$RANK MASTER_ADDR=$ADDR bash scripts/train_c2i_fsdp.sh \
#     --data-path $IMGNET_ROOT/ILSVRC2012_img_train/ --tok-config configs/vq/VQ_XLXXL256.yaml \
#     --vq-ckpt VQ_XLXXL256_e300.pt --gpt-model GPT-XXL --save-path results/gpt/ --sub-exp-dir GPT_XXL_on_XLXXL \
#     --lr-scheduler wsd --warmup 200 --lr 1e-4 --fract-decay 0.2 --iterations 750000 --global-batch-size 512 \
#     --mixed-precision bf16 --ckpt-every 5000
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
launch autoregressive.train_c2i --data-parallel "${DATA_PARALLEL:-sdp}" "$@"
