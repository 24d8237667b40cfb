#!/usr/bin/env bash
# gFID samples (50k by default) as PNGs + npz, evaluated against --gt-npz-path; --search walks the CFG scale.
# Example: GPUS=8 bash scripts/sample_c2i_search_cfg.sh --quant-way vq --sample-dir results/gpt/quan_eval/B_XLXXL \
#   --vq-ckpt VQ_XLXXL256_e300.pt --tok-config configs/vq/VQ_XLXXL256.yaml --gpt-model GPT-B \
#   --gpt-ckpt GPT_B256_e300_VQ_XLXXL.pt --cfg-schedule step --step-start-ratio 0.18 --cfg-scale 1.75 \
#   --precision none --per-proc-batch-size 16 --gt-npz-path VIRTUAL_imagenet256_labeled.npz --clear-cache
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
launch autoregressive.sample_c2i --mode fid "$@"
