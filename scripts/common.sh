#!/usr/bin/env bash
# Sourced by the entry scripts: one launcher for CPU, one GPU and multi-GPU/multi-node torchrun.
#   GPUS / NPROC_PER_NODE  processes per node (default 1: plain python, no torchrun)
#   NNODES, NODE_RANK, MASTER_ADDR, PORT  as for torchrun (defaults 1, 0, 127.0.0.1, 55565)
#   TORCH_RUN_PATH  torchrun executable (default: python -m torch.distributed.run)
#   PYTHON  interpreter (default: the project's .venv if present, else python3)
#   GIGATOK_DRY_RUN=1  print each command as "DRY-RUN <module> <args>" (shell-quoted) instead of running it
GIGATOK_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PYTHONPATH="$GIGATOK_ROOT${PYTHONPATH:+:$PYTHONPATH}"
export TOKENIZERS_PARALLELISM=${TOKENIZERS_PARALLELISM:-true}
# PyTorch backs large CPU tensors with transparent huge pages: ~6 % faster CPU tokenizer steps (fewer page faults on
# fresh activations; benchmarks/README.md). 0 turns it off.
export THP_MEM_ALLOC_ENABLE=${THP_MEM_ALLOC_ENABLE:-1}
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$GIGATOK_ROOT/.venv/bin/python" ]]; then PYTHON="$GIGATOK_ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi

# launch MODULE ARGS... : run a python module on every process of this node.
launch() {
  local module=$1; shift
  if [[ "${GIGATOK_DRY_RUN:-0}" == "1" ]]; then
    printf 'DRY-RUN %s' "$module"; [[ $# -gt 0 ]] && printf ' %q' "$@"; printf '\n'
    return 0
  fi
  local nproc=${GPUS:-${NPROC_PER_NODE:-1}} nnodes=${NNODES:-1}
  if [[ "$nproc" -le 1 && "$nnodes" -le 1 ]]; then
    exec "$PYTHON" -m "$module" "$@"
  fi
  local runner=("$PYTHON" -m torch.distributed.run)
  [[ -n "${TORCH_RUN_PATH:-}" ]] && runner=("$TORCH_RUN_PATH")
  # The first failing rank writes its one-line error here (utils.cli.run_cli); torchrun's own report follows it,
  # so the line is repeated last and its documented exit code (2 bad input, 3 diverged, 4 I/O) is returned.
  local errfile rc=0
  errfile=$(mktemp -u "${TMPDIR:-/tmp}/gigatok-error.XXXXXX")
  GIGATOK_ERROR_FILE=$errfile "${runner[@]}" --nnodes="$nnodes" --nproc_per_node="$nproc" \
    --node_rank="${NODE_RANK:-0}" --master_addr="${MASTER_ADDR:-127.0.0.1}" --master_port="${PORT:-55565}" \
    -m "$module" "$@" || rc=$?
  if [[ $rc -ne 0 && -s "$errfile" ]]; then
    local code line
    IFS=$'\t' read -r code line < "$errfile"
    rm -f "$errfile"
    echo "$line" >&2
    exit "$code"
  fi
  rm -f "$errfile"
  exit "$rc"
}
