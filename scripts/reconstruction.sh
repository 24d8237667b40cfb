#!/usr/bin/env bash
# Reconstruct images with a GigaTok tokenizer and report PSNR/SSIM/codebook usage (+ LPIPS, rFID).
# Example: bash scripts/reconstruction.sh --quant-way vq --data-path autoregressive/demo/examples --image-size 256 \
#   --sample-dir results/reconstructions --vq-ckpt VQ_SS256_e100.pt --model-config configs/vq/VQ_SS256.yaml --qualitative
# Multi-GPU: GPUS=8 bash scripts/reconstruction.sh ...   (see scripts/common.sh for the launcher variables)
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
launch tokenizer.reconstruct "$@"
