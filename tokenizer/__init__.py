"""GigaTok visual tokenizers: build from a config, load released or trained weights."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from utils.checkpoint import PRETRAINED_WEIGHTS, load_weights
from utils.config import to_plain

from .config import model_args, read_tokenizer_config
from .models.vq_model import MODEL_CLASSES, VQVitModel2DPlus, VQVitModelPlus

__all__ = ["build_tokenizer", "load_tokenizer", "tokenizer_info", "VQVitModelPlus", "VQVitModel2DPlus",
           "read_tokenizer_config"]


def build_tokenizer(config: Any, overrides: list[str] | None = None) -> torch.nn.Module:
    """Randomly initialised tokenizer from a YAML path, dict or OmegaConf config (validated)."""
    cfg = read_tokenizer_config(config, overrides)
    args = model_args(cfg)
    model = MODEL_CLASSES[cfg.model.model_cls][0](args)
    model.source_config = to_plain(cfg)  # what save_pretrained writes as config.yaml
    return model


CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "vq"  # in a checkout
# the same YAMLs inside an installed wheel: pyproject.toml maps the package tokenizer.vq_configs to configs/vq
PACKAGED_CONFIG_DIR = Path(__file__).resolve().parent / "vq_configs"


def config_path(name: str) -> Path:
    """``configs/vq/<name>.yaml``: from the checkout when there is one, else from the installed package data."""
    for folder in (CONFIG_DIR, PACKAGED_CONFIG_DIR):
        if (folder / f"{name}.yaml").is_file():
            return folder / f"{name}.yaml"
    return CONFIG_DIR / f"{name}.yaml"  # neither: read_tokenizer_config names the missing file


def resolve_released(config: Any, checkpoint: str | os.PathLike | None) -> tuple[Any, Any]:
    """``(config, checkpoint)`` with a released model's name (``VQ_XLXXL256``) or Hub file (``VQ_XLXXL256_e300.pt``)
    given as ``config`` expanded to its YAML and its Hub file, and a ``save_pretrained`` folder or ``hf://OWNER/REPO``
    to its ``config.yaml`` and ``model.safetensors``."""
    from utils.pretrained import TOKENIZER_CONFIG, pretrained_folder
    from utils.released import find_tokenizer, unknown_model_message

    folder = pretrained_folder(config, "tokenizer")
    if folder is not None:
        return folder / TOKENIZER_CONFIG, checkpoint if checkpoint is not None else folder / PRETRAINED_WEIGHTS
    if not isinstance(config, (str, os.PathLike)) or Path(config).exists():
        return config, checkpoint
    released = find_tokenizer(str(config))
    if released is None:
        if str(config).endswith((".yaml", ".yml")):
            return config, checkpoint  # read_tokenizer_config names the missing file
        raise ValueError(unknown_model_message(str(config)))
    return config_path(released.name), checkpoint if checkpoint is not None else released.file


def load_tokenizer(config: Any, checkpoint: str | os.PathLike | None = None, device: str | torch.device = "cpu",
                   overrides: list[str] | None = None,
                   entries: tuple[str, ...] = ("ema", "model", "state_dict")) -> torch.nn.Module:
    """Tokenizer with weights from ``checkpoint``, in eval mode on ``device``.

    ``config`` may also be a released model's name or Hub file (``load_tokenizer("VQ_XLXXL256")``): its YAML and,
    when ``checkpoint`` is not given, its weights from the Hub; or a ``save_pretrained`` folder / ``hf://OWNER/REPO``
    (its ``config.yaml`` and ``model.safetensors``).

    ``checkpoint``: a local .pt/.pth/.safetensors file, a released file name (``VQ_SS256_e100.pt``, fetched
    from the Hub repo ``YuuTennYi/GigaTok``), or ``hf://OWNER/REPO/FILE``. The ``ema`` entry is used when
    present, else ``model``, else ``state_dict`` (as the original reconstruction script; ``entries`` chooses
    otherwise, e.g. ``("model",)`` as its code extraction); loading is strict.
    """
    config, checkpoint = resolve_released(config, checkpoint)
    if checkpoint is None:
        raise ValueError("load_tokenizer needs a checkpoint (or a released model name as the config)")
    context = f"config {config!r}" if isinstance(config, (str, os.PathLike)) else "the given config"
    model = build_tokenizer(config, overrides)
    load_weights(model, checkpoint, context=context, entries=entries)
    return model.to(device).eval()


def tokenizer_info(config: Any) -> dict:
    """Vocabulary size, token count, image size and class of a tokenizer config, without building any weights
    (what a GPT trained on its codes must match)."""
    cfg = read_tokenizer_config(config)
    with torch.device("meta"):
        model = build_tokenizer(cfg)
    return {"codebook_size": int(model.codebook_size), "num_tokens": int(model.num_tokens),
            "image_size": int(model.image_size), "model_cls": str(cfg.model.model_cls)}
