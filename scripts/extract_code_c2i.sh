#!/usr/bin/env bash
# Tokenise an ImageFolder dataset for GPT training (ten-crop as the original recipe).
# Env (all optional; flags override): IMGNET_ROOT, CODE_PATH, TOK_CONFIG, VQ_CKPT, BSZ.
# Example: bash scripts/extract_code_c2i.sh --data-path $IMGNET_ROOT/ILSVRC2012_img_train \
#   --code-path results/codes/ten_crop --model-config configs/vq/VQ_XLXXL256.yaml --vq-ckpt VQ_XLXXL256_e300.pt
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
defaults=()
[[ -n "${IMGNET_ROOT:-}" ]] && defaults+=(--data-path "$IMGNET_ROOT/ILSVRC2012_img_train")
[[ -n "${CODE_PATH:-}" ]] && defaults+=(--code-path "$CODE_PATH")
[[ -n "${TOK_CONFIG:-}" ]] && defaults+=(--model-config "$TOK_CONFIG")
[[ -n "${VQ_CKPT:-}" ]] && defaults+=(--vq-ckpt "$VQ_CKPT")
launch autoregressive.extract_codes --ten-crop --crop-range 1.1 --resume --batch-size "${BSZ:-32}" "${defaults[@]}" "$@"
