#!/usr/bin/env bash
# Optional environment for the entry scripts; source it (". set_env_vars.sh") after editing the paths you need.
# Every variable is optional: unset ones fall back to the defaults shown. No nvidia-smi is needed.
export PROJECT_ROOT=${PROJECT_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")" && pwd)}
export IMGNET_ROOT=${IMGNET_ROOT:-}            # folder holding ILSVRC2012_img_train/ and ILSVRC2012_img_val/
export VAL_PATH=${VAL_PATH:-}                  # 256x256 val images made by scripts/val.sh
export EVAL_PYTHON_PATH=${EVAL_PYTHON_PATH:-}  # accepted for compatibility; evaluation runs in this environment
export TORCH_RUN_PATH=${TORCH_RUN_PATH:-}      # torchrun executable; empty = "python -m torch.distributed.run"
export WANDB_API_KEY=${WANDB_API_KEY:-}        # only if you log to wandb
export GIGATOK_INCEPTION_PATH=${GIGATOK_INCEPTION_PATH:-}  # FID Inception weights file (offline); empty = hub cache/download
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-0}    # 1: released checkpoints only from the local Hugging Face cache
# Processes per node: default = number of visible CUDA devices (1 on a CPU-only machine).
if [[ -z "${GPUS:-}" ]]; then
  _py="$PROJECT_ROOT/.venv/bin/python"; [[ -x "$_py" ]] || _py=python3
  GPUS=$("$_py" -c "import torch; print(max(torch.cuda.device_count(), 1))" 2>/dev/null || echo 1)
  unset _py
fi
export GPUS
export NNODES=${NNODES:-1}
export NODE_RANK=${NODE_RANK:-0}
export MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
# PORT: torchrun's port, default 55565 (scripts/common.sh; the original sets 3343 here)
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
export MKL_THREADING_LAYER=${MKL_THREADING_LAYER:-GNU}
export TOKENIZERS_PARALLELISM=${TOKENIZERS_PARALLELISM:-true}
export THP_MEM_ALLOC_ENABLE=${THP_MEM_ALLOC_ENABLE:-1}  # huge pages for large CPU tensors (scripts/common.sh sets it too)
export GIGATOK_NATIVE_KERNELS=${GIGATOK_NATIVE_KERNELS:-1}  # 0: never build/use utils/cpu_kernels.py
# export GIGATOK_KERNEL_MARCH=x86-64-v3  # -march for those kernels (default native; one level for mixed nodes)
