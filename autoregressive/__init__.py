"""Class-conditional autoregressive GPTs on GigaTok tokens: models, sampling and loading."""
from autoregressive.loading import build_gpt, load_gpt
from autoregressive.models.generate import SamplingConfig, generate
from autoregressive.models.gpt import GPT_models

__all__ = ["GPT_models", "SamplingConfig", "generate", "load_gpt", "build_gpt"]
