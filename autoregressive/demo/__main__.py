"""``python -m autoregressive.demo``: serve the browser demo (see autoregressive/demo/app.py)."""
from autoregressive.demo.app import main
from utils.cli import run_cli

run_cli(main, "demo")
