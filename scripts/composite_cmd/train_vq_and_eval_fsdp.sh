#!/usr/bin/env bash
# As train_vq_and_eval.sh, with the tokenizer trained by FSDP2 (scripts/train_vq_fsdp.sh, gradients reduced in
# PRECISION, WSD FRACT_DECAY) and 50 tokenizer "epochs" by default, as the original's script.
TOK_EPOCH=${TOK_EPOCH:-50} VQ_TRAIN_SCRIPT=train_vq_fsdp.sh exec bash "$(dirname "${BASH_SOURCE[0]}")/train_vq_and_eval.sh"
