#!/usr/bin/env bash
# Linear probes on the tokenizer's and the GPT's features (LM_ONLY=True skips the tokenizer probe), as the original.
# Variables: tok_common.sh, lm_common.sh, probe_common.sh (TOK_LIN_EXP_DIR, LM_LIN_EXP_DIR, ...).
TOK_EPOCH=${TOK_EPOCH:-100}
PRECISION=${PRECISION:-none}
source "$(dirname "${BASH_SOURCE[0]}")/lm_common.sh"
source "$(dirname "${BASH_SOURCE[0]}")/probe_common.sh"
[[ "${LM_ONLY:-False}" == "False" ]] && tok_probe
lm_probe
