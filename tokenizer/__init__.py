"""GigaTok visual tokenizers: build from a config, load released or trained weights."""
from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from utils.checkpoint import (
    PRETRAINED_WEIGHTS,
    CheckpointError,
    is_checkpoint_file,
    load_state_dict_strict,
    read_model_description,
)
from utils.config import to_plain

from .config import model_args, read_tokenizer_config
from .models.accelerate import accelerate
from .models.vq_model import MODEL_CLASSES, VQVitModel2DPlus, VQVitModelPlus

__all__ = ["build_tokenizer", "load_tokenizer", "accelerate", "tokenizer_info", "VQVitModelPlus", "VQVitModel2DPlus",
           "read_tokenizer_config", "described_config", "settle_tokenizer_config"]


def build_tokenizer(config: Any, overrides: list[str] | None = None, fast: bool = True) -> torch.nn.Module:
    """Randomly initialised tokenizer from a YAML path, dict or OmegaConf config (validated).

    ``fast``: with the CPU speed paths swapped in (``tokenizer.models.accelerate``; float rounding only, PyTorch's own
    forward on GPUs and wherever they do not apply); ``False`` builds the plain modules."""
    cfg = read_tokenizer_config(config, overrides)
    args = model_args(cfg)
    model = MODEL_CLASSES[cfg.model.model_cls][0](args)
    model.source_config = to_plain(cfg)  # what save_pretrained writes as config.yaml
    return accelerate(model) if fast else model


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
    given as ``config`` expanded to its YAML and its Hub file, a ``save_pretrained`` folder or ``hf://OWNER/REPO``
    to its ``config.yaml`` and ``model.safetensors``, and a checkpoint file that stores its config (given as
    ``config``, or as ``checkpoint`` with ``config=None``) to that config and that file."""
    from utils.pretrained import TOKENIZER_CONFIG, pretrained_folder
    from utils.released import find_tokenizer, unknown_model_message

    if config is None and checkpoint is not None or is_checkpoint_file(config):
        # a checkpoint that stores its config (a tokenizer training checkpoint's ``config``)
        source = checkpoint if config is None else config
        return described_config(source), checkpoint if checkpoint is not None else source
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


def described_config(checkpoint: str | os.PathLike) -> dict:
    """The tokenizer config a checkpoint stores (a training checkpoint's ``config``, a save_pretrained folder's
    config.yaml); a ConfigError when it stores none (a released file, bare weights) or holds a GPT."""
    from utils.config import ConfigError

    description = read_model_description(checkpoint)
    if description.kind == "tokenizer":
        return description.config
    if description.kind == "gpt":
        raise ConfigError(f"{description.source!r} is a GPT checkpoint, not a tokenizer's")
    raise ConfigError(f"the tokenizer checkpoint {description.source!r} stores no config (a released file or bare "
                      "weights): give its YAML, e.g. --tok-config configs/vq/<name>.yaml or "
                      "load_tokenizer('configs/vq/<name>.yaml', checkpoint)")


def architecture(config: Any) -> dict:
    """What a tokenizer config builds: its class and every model argument (the trainer's distillation settings
    included, which size the distill head). Two configs with the same architecture load the same weights."""
    cfg = read_tokenizer_config(config)
    return {"model_cls": str(cfg.model.model_cls), **asdict(model_args(cfg))}


def settle_tokenizer_config(vq_ckpt: str | os.PathLike | None, given: Any = None, gpt: Any = None,
                            flag: str = "--tok-config") -> Any:
    """The tokenizer config of an entry point (a YAML path or a config dict) for the weights ``vq_ckpt``:

    1. a checkpoint that stores its config (training checkpoint, save_pretrained folder) gives it; ``given`` (the
       ``flag``'s value) must then build the same architecture, else one ConfigError names the flag, the
       differing settings and both values;
    2. otherwise ``given``, else the released model the file belongs to (``VQ_XLXXL256_e300.pt``), else what the
       GPT checkpoint ``gpt`` (a :class:`~utils.checkpoint.ModelDescription`) records: the tokenizer config it was
       trained on (format version 1) or the ``tok_config`` path of its training args (version 0).
    """
    from utils.config import ConfigError
    from utils.released import find_tokenizer

    text = None if vq_ckpt is None else os.fspath(vq_ckpt)
    released = text is not None and not Path(text).exists() and "/" not in text and find_tokenizer(text) is not None
    stored = None
    if text is not None and not released:
        description = read_model_description(text)
        stored = description.config if description.kind == "tokenizer" else None
    if stored is not None:
        if given is not None:
            ours, theirs = architecture(stored), architecture(given)
            missing = "(not set)"  # the two model classes take different arguments
            differ = [f"{key}: {theirs.get(key, missing)!r} (the checkpoint has {ours.get(key, missing)!r})"
                      for key in [*ours, *(k for k in theirs if k not in ours)] if ours.get(key) != theirs.get(key)]
            if differ:
                raise ConfigError(f"the tokenizer checkpoint {text} stores its config, and {flag} {given} builds "
                                  f"another model: {'; '.join(differ[:5])}"
                                  f"{f' and {len(differ) - 5} more' if len(differ) > 5 else ''}. Drop {flag} "
                                  "(the checkpoint's config is used) or give the checkpoint it describes")
            return given
        return stored
    if given is not None:
        return given
    if released:
        return str(config_path(find_tokenizer(text).name))
    if gpt is not None and gpt.tokenizer_config is not None:
        return gpt.tokenizer_config
    trained_on = (gpt.train_args.get("tok_config") or gpt.train_args.get("model_config")) if gpt is not None else None
    if trained_on and Path(str(trained_on)).is_file():
        return str(trained_on)
    where = f"the tokenizer checkpoint {text!r} stores no config" if text else "no tokenizer checkpoint is given"
    raise ConfigError(f"{flag} is needed: {where}, and the GPT checkpoint does not name its tokenizer's config")


def load_tokenizer(config: Any, checkpoint: str | os.PathLike | None = None, device: str | torch.device = "cpu",
                   overrides: list[str] | None = None,
                   entries: tuple[str, ...] = ("ema", "model", "state_dict"),
                   image_size: int | None = None, fast: bool = True) -> torch.nn.Module:
    """Tokenizer with weights from ``checkpoint``, in eval mode on ``device``.

    ``config`` may also be a released model's name or Hub file (``load_tokenizer("VQ_XLXXL256")``): its YAML and,
    when ``checkpoint`` is not given, its weights from the Hub; a ``save_pretrained`` folder / ``hf://OWNER/REPO``
    (its ``config.yaml`` and ``model.safetensors``); or a checkpoint file that stores its config
    (``load_tokenizer("exp/checkpoints/0000300.pt")``, a training checkpoint's ``config`` entry; ``config=None``
    with ``checkpoint`` given means the same).

    ``checkpoint``: a local .pt/.pth/.safetensors file, a released file name (``VQ_SS256_e100.pt``, fetched
    from the Hub repo ``YuuTennYi/GigaTok``), or ``hf://OWNER/REPO/FILE``. The ``ema`` entry is used when
    present, else ``model``, else ``state_dict`` (as the original reconstruction script; ``entries`` chooses
    otherwise, e.g. ``("model",)`` as its code extraction); loading is strict.

    ``image_size``: build the model for another image size and resample the checkpoint's grid position tables to it
    (``tokenizer.resolution``; e.g. a 256-px release at 512 px). Without it, a checkpoint of another resolution than
    the config's is refused with a message naming both.

    ``fast``: a CPU ``device`` gets the CPU speed paths (``tokenizer.models.accelerate``, float rounding only), a GPU
    the plain modules; ``False``: the plain modules everywhere.
    """
    from utils.checkpoint import load_checkpoint_file, resolve_checkpoint, select_state_dict, strip_prefixes

    from .resolution import resample_position_tables, resolution_mismatch, set_image_size

    config, checkpoint = resolve_released(config, checkpoint)
    if checkpoint is None:
        raise ValueError("load_tokenizer needs a checkpoint (or a released model name as the config)")
    context = f"config {config!r}" if isinstance(config, (str, os.PathLike)) else "the given config"
    cfg = read_tokenizer_config(config, overrides)
    if image_size is not None:
        cfg = set_image_size(cfg, image_size)
    model = build_tokenizer(cfg, fast=False)
    path = resolve_checkpoint(checkpoint)
    state_dict = strip_prefixes(select_state_dict(load_checkpoint_file(path), str(path), entries))
    if image_size is not None:
        state_dict = resample_position_tables(state_dict, model)
    else:
        mismatch = resolution_mismatch(state_dict, model)
        if mismatch is not None:
            down = model.image_size // model.grid_size
            raise CheckpointError(
                f"{path} is a tokenizer for {mismatch[0] * down}-px images ({mismatch[0]}x{mismatch[0]} token grid) "
                f"and {context} builds one for {model.image_size} px: pass image_size={model.image_size} "
                f"(load_tokenizer) or --image-size {model.image_size} (the scripts) to resample its position tables")
    load_state_dict_strict(model, state_dict, source=str(path), context=context)
    model = model.to(device).eval()
    return accelerate(model, device) if fast else model


def tokenizer_info(config: Any) -> dict:
    """Vocabulary size, token count, image size, class and token grid ((1, N) for the 1D tokenizers) of a tokenizer
    config, without building any weights (what a GPT trained on its codes must match)."""
    cfg = read_tokenizer_config(config)
    with torch.device("meta"):
        model = build_tokenizer(cfg, fast=False)
    return {"codebook_size": int(model.codebook_size), "num_tokens": int(model.num_tokens),
            "image_size": int(model.image_size), "model_cls": str(cfg.model.model_cls),
            "token_grid": tuple(int(g) for g in model.token_grid)}
