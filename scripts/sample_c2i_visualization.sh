#!/usr/bin/env bash
# Class grids from a GPT + tokenizer. Example (README):
#   bash scripts/sample_c2i_visualization.sh --quant-way vq --image-size 256 --sample-dir results/gpt_eval/B_XLXXL \
#     --vq-ckpt VQ_XLXXL256_e300.pt --tok-config configs/vq/VQ_XLXXL256.yaml --gpt-model GPT-B \
#     --gpt-ckpt GPT_B256_e300_VQ_XLXXL.pt --cfg-schedule constant --cfg-scale 4.0 --precision fp16 \
#     --class-idx "22,388,90,978" --per-proc-batch-size 8 --qual-num 40
# Flags: python -m autoregressive.sample_c2i --help. Several processes: GPUS=N (scripts/common.sh).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
launch autoregressive.sample_c2i --mode visualize "$@"
