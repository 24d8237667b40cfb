"""GPT modules (``gpt``) and the sampling loop (``generate``; the function is ``autoregressive.generate``)."""
from autoregressive.models.gpt import GPT_models, ModelArgs, Transformer

__all__ = ["GPT_models", "ModelArgs", "Transformer"]
