#!/usr/bin/env bash
# Build the rFID reference: 256-px ADM centre crops of ImageNet val as PNGs and val_imagenet.npz.
# Example: bash scripts/val.sh --data-path $IMGNET_ROOT/ILSVRC2012_img_val --png-dir $VAL_PATH --npz val_imagenet.npz
# (single process with DataLoader workers; the original ran this step on 8 GPUs)
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
exec "$PYTHON" -m evaluations.make_val_npz "$@"
