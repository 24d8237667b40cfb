#!/usr/bin/env bash
# Sourced by the sbatch templates of this folder: one torchrun agent per node through srun, the rendezvous derived from
# SLURM's variables, the warning signal before the time limit handed to the run, and a requeue when the run asks for it.
#
# Submit from the repository root (SLURM runs a copy of the batch file from its spool folder, so the repository is
# found through $SLURM_SUBMIT_DIR) or set GIGATOK_ROOT. Environment (all optional):
#   GPUS          processes per node (default: the count in $SLURM_GPUS_PER_NODE / $SLURM_GPUS_ON_NODE, else 1)
#   RDZV_PORT     port of the c10d rendezvous on the first node (default: 29500 + job id mod 10000, so that jobs
#                 sharing a node do not collide)
#   MAX_RESTARTS, PREEMPT_GRACE  as in scripts/common.sh (elastic restarts; torchrun's shutdown grace)
#   REQUEUE_ON_WARNING=1  requeue after the warning signal whatever the exit code (for jobs that resume by being
#                 rerun, like extraction with --resume); by default only a run that exits 75 is requeued
#   GIGATOK_DRY_RUN=1  print the srun command (DRY-RUN-SRUN) and, for every node, the commands its task would launch
#                 (DRY-RUN-NODE <id>, then scripts/common.sh's DRY-RUN lines), and run nothing
# Exit code: the run's (75: preempted and requeued).
GIGATOK_ROOT=${GIGATOK_ROOT:-${SLURM_SUBMIT_DIR:-$PWD}}
if [[ ! -f "$GIGATOK_ROOT/scripts/common.sh" ]]; then
  echo "error: $GIGATOK_ROOT is not the GigaTok repository: submit from its root or set GIGATOK_ROOT" >&2
  exit 2
fi
source "$GIGATOK_ROOT/scripts/common.sh"  # wait_child
EXIT_REQUEUE=75  # utils.cli.EXIT_REQUEUE: the run stopped at a checkpoint and wants to be rerun

# slurm_first_host: the first host of $SLURM_JOB_NODELIST (the rendezvous host). scontrol expands any host list; where
# it is missing (a login container, the tests) the usual forms are parsed here: "gpu-[003-010,012],cpu1" -> gpu-003.
slurm_first_host() {
  if command -v scontrol >/dev/null 2>&1; then
    local hosts  # read whole: "| head -n 1" would SIGPIPE scontrol and fail under pipefail
    hosts=$(scontrol show hostnames "$SLURM_JOB_NODELIST") || return 2
    echo "${hosts%%$'\n'*}"
    return
  fi
  if [[ "$SLURM_JOB_NODELIST" =~ ^([^,\[]+)(\[([^],-]+))? ]]; then
    echo "${BASH_REMATCH[1]}${BASH_REMATCH[3]}"
  else
    echo "error: cannot read the first host of SLURM_JOB_NODELIST='$SLURM_JOB_NODELIST'" >&2
    return 2
  fi
}

# slurm_gpus_per_node: the GPU count of "8", "h100:8" or "gpu:h100:8" ($SLURM_GPUS_PER_NODE), else 1.
slurm_gpus_per_node() {
  local spec=${SLURM_GPUS_PER_NODE:-${SLURM_GPUS_ON_NODE:-1}}
  spec=${spec##*:}
  spec=${spec%%(*}  # "8(x2)" forms of some versions
  [[ "$spec" =~ ^[0-9]+$ ]] && echo "$spec" || echo 1
}

# slurm_run SCRIPT ARGS... : run scripts/SCRIPT on every node of the allocation (one srun task, one torchrun agent per
# node) and requeue the job when the run exits 75 (or after the warning signal with REQUEUE_ON_WARNING=1).
slurm_run() {
  local script=$1; shift
  if [[ -z "${SLURM_JOB_ID:-}" || -z "${SLURM_JOB_NODELIST:-}" ]]; then
    echo "error: not inside a SLURM job (submit this file with sbatch)" >&2
    exit 2
  fi
  local nnodes=${SLURM_JOB_NUM_NODES:-${SLURM_NNODES:-1}} head
  head=$(slurm_first_host) || { echo "error: no rendezvous host from SLURM_JOB_NODELIST" >&2; exit 2; }
  # c10d rendezvous with the job id: node ranks are assigned by the rendezvous, and after an elastic restart the
  # agents meet again under the same id (a requeued job keeps its id and gets a fresh rendezvous store).
  export NNODES=$nnodes RDZV_ENDPOINT="$head:${RDZV_PORT:-$((29500 + SLURM_JOB_ID % 10000))}" RDZV_ID=$SLURM_JOB_ID
  export GPUS=${GPUS:-$(slurm_gpus_per_node)}
  export MAX_RESTARTS=${MAX_RESTARTS:-0} PREEMPT_GRACE=${PREEMPT_GRACE:-300}
  # one task per node; srun does not inherit sbatch's --cpus-per-task on recent SLURM versions; a rank that exits
  # first (75 on one node) must not get the other nodes killed while rank 0 may still be writing the checkpoint.
  local srun=(srun --nodes="$nnodes" --ntasks="$nnodes" --ntasks-per-node=1 --kill-on-bad-exit=0)
  [[ -n "${SLURM_CPUS_PER_TASK:-}" ]] && srun+=(--cpus-per-task="$SLURM_CPUS_PER_TASK")
  srun+=(bash "$GIGATOK_ROOT/$script" "$@")
  echo "[slurm] job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}) on $nnodes node(s) x $GPUS process(es)," \
    "rendezvous $RDZV_ENDPOINT" >&2
  if [[ "${GIGATOK_DRY_RUN:-0}" == "1" ]]; then
    printf 'DRY-RUN-SRUN'; printf ' %q' "${srun[@]}"; printf '\n'
    local node
    for ((node = 0; node < nnodes; node++)); do
      echo "DRY-RUN-NODE $node"
      SLURM_NODEID=$node SLURM_PROCID=$node SLURM_STEP_ID=0 bash "$GIGATOK_ROOT/$script" "$@" || return
    done
    return 0
  fi

  # The warning (#SBATCH --signal=B:USR1@...) reaches only this shell; it is handed once to the job steps (every
  # process of the srun step: the agents, which forward it, and the workers, which checkpoint and exit 75).
  # SIGTERM (scancel, preemption) reaches every step by SLURM itself; the shell stays to report, and does not
  # requeue a job that was cancelled.
  local warned=0 terminated=0 rc=0 pid
  trap '_slurm_warn' USR1
  trap 'GIGATOK_TRAPPED=1 terminated=1; echo "[slurm] SIGTERM: waiting for the run to stop" >&2' TERM
  "${srun[@]}" &
  pid=$!
  wait_child "$pid"
  rc=$WAIT_RC
  trap - USR1 TERM
  if [[ $terminated == 0 && ( $rc == "$EXIT_REQUEUE" || ( $warned == 1 && "${REQUEUE_ON_WARNING:-0}" == 1 ) ) ]]; then
    echo "[slurm] the run stopped with exit code $rc; requeueing job $SLURM_JOB_ID" >&2
    scontrol requeue "$SLURM_JOB_ID" || echo "[slurm] scontrol requeue failed: resubmit this job" >&2
  fi
  exit "$rc"
}

_slurm_warn() {
  GIGATOK_TRAPPED=1
  [[ $warned == 1 ]] && return  # once: scancel --signal must not loop back into this shell
  warned=1
  echo "[slurm] $(date '+%F %T') time limit near: asking the run to checkpoint and stop" >&2
  scancel --signal=USR1 "$SLURM_JOB_ID" || echo "[slurm] scancel --signal=USR1 failed" >&2
}
