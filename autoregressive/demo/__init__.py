"""The browser demo (``bash scripts/demo.sh`` or ``python -m autoregressive.demo``): reconstruct images with a
tokenizer and sample classes with a GPT in a gradio page. It sits on the autoregressive floor because it needs both
the tokenizer and the GPT. ``models`` holds everything but the page (tested without a browser); ``app`` builds the
page and the command line. gradio is imported only when the server starts (the demo extra)."""
from autoregressive.demo.app import build_parser, main

__all__ = ["build_parser", "main"]
