#!/usr/bin/env bash
# Linear probe on tokenizer features. Example:
#   GPUS=8 bash scripts/train_lin_probe.sh --data-path $IMGNET_ROOT --model-config configs/vq/VQ_BL256.yaml \
#     --vq-ckpt VQ_BL256_e200.pt --save-path results/lin_probe --sub-exp-dir VQ_BL256 --batch-size 128 \
#     --global-batch-size 8192 --ckpt-epoch 5
# Add --eval to evaluate the finished probe only. Flags: python -m tokenizer.lin_probe --help
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
launch tokenizer.lin_probe "$@"
