#!/usr/bin/env bash
# Sourced by the entry scripts: one launcher for CPU, one GPU and multi-GPU/multi-node torchrun.
#   GPUS / NPROC_PER_NODE  processes per node (default 1: plain python, no torchrun)
#   NNODES, NODE_RANK, MASTER_ADDR, PORT  static rendezvous as for torchrun (defaults 1, 0, 127.0.0.1, 55565)
#   RDZV_ENDPOINT=HOST:PORT  torchrun's c10d rendezvous instead (node ranks assigned by it; NODE_RANK, MASTER_ADDR and
#     PORT are then unused); RDZV_ID  its job id (default: $SLURM_JOB_ID, else "gigatok")
#   MAX_RESTARTS  elastic restarts of the worker group after a worker failure (torchrun --max-restarts; default 0);
#     above 0 the c10d rendezvous is used (on RDZV_ENDPOINT, else MASTER_ADDR:PORT)
#   PREEMPT_GRACE  seconds torchrun waits for its workers after forwarding SIGTERM/SIGUSR1 before it SIGKILLs them,
#     enough to finish a step and write a checkpoint (torchrun --shutdown-timeout; default 300)
#   TORCH_RUN_PATH  torchrun executable (default: python -m torch.distributed.run)
#   PYTHON  interpreter (default: the project's .venv if present, else python3)
#   GIGATOK_DRY_RUN=1  print each command as "DRY-RUN <module> <args>" (shell-quoted) and the whole command line as
#     "DRY-RUN-EXEC <argv>" instead of running it
# Exit codes: the first failing rank's documented code (2 bad input, 3 diverged, 4 I/O, 75 preempted: requeue and
# rerun the same command to resume), else torchrun's.
GIGATOK_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PYTHONPATH="$GIGATOK_ROOT${PYTHONPATH:+:$PYTHONPATH}"
export TOKENIZERS_PARALLELISM=${TOKENIZERS_PARALLELISM:-true}
# PyTorch backs large CPU tensors with transparent huge pages: ~6 % faster CPU tokenizer steps (fewer page faults on
# fresh activations; benchmarks/README.md). 0 turns it off.
export THP_MEM_ALLOC_ENABLE=${THP_MEM_ALLOC_ENABLE:-1}
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$GIGATOK_ROOT/.venv/bin/python" ]]; then PYTHON="$GIGATOK_ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi

# The signals torchrun's agent forwards to its workers: its default list plus SIGUSR1, SLURM's usual warning signal
# before a time limit (scripts/slurm/), on which the trainers checkpoint and exit 75.
GIGATOK_SIGNALS=(TERM INT HUP QUIT USR1)

# launcher_argv MODULE ARGS... : sets LAUNCH_ARGV to the command that runs MODULE on every process of this node and
# LAUNCH_TORCHRUN to 1 when that is torchrun (several processes, nodes, a c10d rendezvous or elastic restarts).
launcher_argv() {
  local module=$1; shift
  local nproc=${GPUS:-${NPROC_PER_NODE:-1}} nnodes=${NNODES:-1}
  local port=${PORT:-55565}  # the project's one default port (the original's launch scripts' default)
  if [[ "$nproc" -le 1 && "$nnodes" -le 1 && -z "${RDZV_ENDPOINT:-}" && "${MAX_RESTARTS:-0}" -le 0 ]]; then
    LAUNCH_ARGV=("$PYTHON" -m "$module" "$@") LAUNCH_TORCHRUN=0
    return
  fi
  LAUNCH_TORCHRUN=1
  LAUNCH_ARGV=("$PYTHON" -m torch.distributed.run)
  [[ -n "${TORCH_RUN_PATH:-}" ]] && LAUNCH_ARGV=("$TORCH_RUN_PATH")
  LAUNCH_ARGV+=(--nnodes="$nnodes" --nproc-per-node="$nproc")
  if [[ -n "${RDZV_ENDPOINT:-}" || "${MAX_RESTARTS:-0}" -gt 0 ]]; then
    # Elastic restarts need the c10d rendezvous with a store per round: the static rendezvous, and c10d sharing the
    # agent's store with the workers (torch's default), keep one store for every restart round, so a restarted
    # rank can read the previous round's dead peer addresses and fail to connect ("Gloo connectFullMesh failed").
    # Without RDZV_ENDPOINT the c10d store is served on MASTER_ADDR:PORT.
    export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=${TORCH_DISABLE_SHARE_RDZV_TCP_STORE:-1}
    LAUNCH_ARGV+=(--rdzv-backend=c10d --rdzv-endpoint="${RDZV_ENDPOINT:-${MASTER_ADDR:-127.0.0.1}:$port}"
                  --rdzv-id="${RDZV_ID:-${SLURM_JOB_ID:-gigatok}}")
  else
    LAUNCH_ARGV+=(--node-rank="${NODE_RANK:-0}" --master-addr="${MASTER_ADDR:-127.0.0.1}"
                  --master-port="$port")
  fi
  local signals
  signals=$(printf 'SIG%s,' "${GIGATOK_SIGNALS[@]}")
  LAUNCH_ARGV+=(--max-restarts="${MAX_RESTARTS:-0}" --signals-to-handle="${signals%,}"
                --shutdown-timeout="${PREEMPT_GRACE:-300}" -m "$module" "$@")
}

# wait_child PID : sets WAIT_RC to the exit status of the background child PID. A trapped signal makes `wait` return
# early (128 + signal) while the child runs on, so the traps set GIGATOK_TRAPPED and the wait is repeated; a repeat
# that finds the child already collected (127) keeps the status before it.
wait_child() {
  local pid=$1 rc=
  while :; do
    GIGATOK_TRAPPED=0
    local before=$rc
    rc=0
    wait "$pid" || rc=$?
    if [[ $rc == 127 && -n "$before" ]]; then rc=$before; break; fi
    [[ $GIGATOK_TRAPPED == 1 && $rc -gt 128 ]] || break
  done
  WAIT_RC=$rc
}

# launch MODULE ARGS... : run a python module on every process of this node.
launch() {
  local module=$1; shift
  launcher_argv "$module" "$@"
  if [[ "${GIGATOK_DRY_RUN:-0}" == "1" ]]; then
    printf 'DRY-RUN %s' "$module"; [[ $# -gt 0 ]] && printf ' %q' "$@"; printf '\n'
    printf 'DRY-RUN-EXEC'; printf ' %q' "${LAUNCH_ARGV[@]}"; printf '\n'
    return 0
  fi
  [[ "$LAUNCH_TORCHRUN" == 1 ]] && _launch_torchrun
  exec "${LAUNCH_ARGV[@]}"  # one process: it gets the signals itself and its exit code is the script's
}

# Runs LAUNCH_ARGV (torchrun) and exits with the first failing rank's documented code.
_launch_torchrun() {
  # The first failing rank writes its one-line error here (utils.cli.run_cli); torchrun's own report follows it,
  # so the line is repeated last and its documented exit code (2 bad input, 3 diverged, 4 I/O, 75 preempted) is
  # returned.
  local errfile rc=0 pid sig
  errfile=$(mktemp -u "${TMPDIR:-/tmp}/gigatok-error.XXXXXX")
  export GIGATOK_ERROR_FILE=$errfile
  if [[ -n "${SLURM_STEP_ID:-}" ]]; then
    # Inside a SLURM job step, slurmstepd signals every process of the step (the agent included), so relaying
    # here would hand the agent each signal twice; the shell only has to survive to report the exit code.
    for sig in "${GIGATOK_SIGNALS[@]}"; do trap 'GIGATOK_TRAPPED=1' "$sig"; done
    "${LAUNCH_ARGV[@]}" &
    pid=$!
  else
    # The agent runs in its own session, so this shell is the one way a signal reaches it (a Ctrl-C at the
    # terminal or a kill of the script's process group would otherwise reach it twice): relayed once each.
    local session=()
    command -v setsid >/dev/null && session=(setsid)
    "${session[@]}" "${LAUNCH_ARGV[@]}" &
    pid=$!
    for sig in "${GIGATOK_SIGNALS[@]}"; do trap "GIGATOK_TRAPPED=1; kill -s $sig \$pid 2>/dev/null" "$sig"; done
  fi
  wait_child "$pid"
  rc=$WAIT_RC
  for sig in "${GIGATOK_SIGNALS[@]}"; do trap - "$sig"; done
  unset GIGATOK_ERROR_FILE
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
