#!/usr/bin/env bash
# The whole GPU check in one command: the CUDA tests, then the benchmarks, into one device_check.json and a table.
#   bash benchmarks/device_check.sh                        # on a CUDA machine (under 8 minutes on one GPU)
#   bash benchmarks/device_check.sh --device cpu --quick   # the same chain on tiny sizes (CI runs this)
# Flags: see `python benchmarks/device_check.py --help` (--out, --parts, --part-timeout, --render-readme ...).
# PYTHON picks the interpreter (default: the project's .venv if present, else python3).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$PYTHON" benchmarks/device_check.py "$@"
