#!/usr/bin/env bash
# Install (if needed) and run the whole test suite offline on CPU. Extra args go to pytest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash env_install.sh --test
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES-}
exec .venv/bin/python -m pytest tests "$@"
