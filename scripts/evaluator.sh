#!/usr/bin/env bash
# ADM-compatible FID / sFID / IS / precision / recall in PyTorch (no TensorFlow environment needed).
# Example: bash scripts/evaluator.sh VIRTUAL_imagenet256_labeled.npz samples.npz [--device cuda] [--out metrics.json]
# Offline: --inception-path FILE or GIGATOK_INCEPTION_PATH=FILE (the StyleGAN metrics inception-2015-12-05.pt).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
exec "$PYTHON" -m evaluations.c2i.evaluator "$@"
