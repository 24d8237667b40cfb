"""Build a GPT from a preset name or a small config and load its weights strictly."""
from __future__ import annotations

import json
import os
from dataclasses import fields
from pathlib import Path
from typing import Any, Mapping, Optional

import torch

from autoregressive.models.gpt import GPT_models, ModelArgs, Transformer
from utils.checkpoint import PRETRAINED_WEIGHTS, load_weights
from utils.config import ConfigError, check_keys, load_config, to_plain
from utils.pretrained import GPT_CONFIG, pretrained_folder

__all__ = ["load_gpt", "build_gpt", "gpt_config_of", "add_variant_flags", "GPT_CHECKPOINT_ENTRIES"]

# The original samplers read checkpoint["model"], else ["module"] (DeepSpeed), else ["state_dict"];
# an "ema" entry, if a file had one, is ignored by them, so it is ignored here too.
GPT_CHECKPOINT_ENTRIES = ("model", "module", "state_dict")
_ARG_NAMES = {f.name for f in fields(ModelArgs)} - {"dim", "n_layer", "n_head"}


def _parse(name_or_config: Any, model_kwargs: dict) -> tuple[str, dict, Optional[str]]:
    """Return (preset name, constructor kwargs, checkpoint named in the config or None)."""
    if isinstance(name_or_config, str) and name_or_config in GPT_models:
        return name_or_config, dict(model_kwargs), None
    folder = pretrained_folder(name_or_config, "gpt")
    if folder is not None:  # a save_pretrained folder or hf://OWNER/REPO: its config.json and model.safetensors
        try:
            stored = json.loads((folder / GPT_CONFIG).read_text())
        except ValueError as exc:
            raise ConfigError(f"{str(folder / GPT_CONFIG)!r} is not valid JSON: {exc}") from exc
        name, kwargs, _ = _parse(stored, model_kwargs)
        return name, kwargs, str(folder / PRETRAINED_WEIGHTS)
    if isinstance(name_or_config, str) and not Path(name_or_config).exists():
        from utils.released import find_gpt
        released = find_gpt(name_or_config)
        if released is not None:  # a released GPT: its preset, the released vocabulary / length / classes, its file
            kwargs = {"vocab_size": 16384, "block_size": 256, "num_classes": 1000, **model_kwargs}
            return released.preset, kwargs, released.file
    if isinstance(name_or_config, (str, os.PathLike)) and not Path(name_or_config).is_file():
        from utils.released import GPTS, _near
        raise ValueError(f"unknown GPT model {str(name_or_config)!r}: not a preset ({sorted(GPT_models)}), not a "
                         f"released GPT ({sorted(GPTS)}) and not a config file"
                         f"{_near(str(name_or_config), [*GPT_models, *GPTS])}")
    if not isinstance(name_or_config, (str, os.PathLike, Mapping)) and not hasattr(name_or_config, "keys"):
        raise TypeError(f"name_or_config must be a preset name, a YAML path or a dict, not "
                        f"{type(name_or_config).__name__}")
    cfg = to_plain(load_config(name_or_config))
    cfg = cfg.get("gpt", cfg) if isinstance(cfg.get("gpt"), Mapping) else cfg
    check_keys(cfg, _ARG_NAMES | {"gpt_model", "gpt_ckpt"}, "gpt")
    if "gpt_model" not in cfg:
        raise ConfigError(f"GPT config needs a 'gpt_model' key naming a preset ({sorted(GPT_models)})")
    name = cfg.pop("gpt_model")
    if name not in GPT_models:
        raise ConfigError(f"gpt.gpt_model {name!r} is not a preset ({sorted(GPT_models)})")
    ckpt = cfg.pop("gpt_ckpt", None)
    cfg.update(model_kwargs)
    return name, cfg, ckpt


def gpt_config_of(name_or_config: Any, **model_kwargs) -> dict:
    """``{"gpt_model": preset, **model arguments}`` for anything :func:`load_gpt` accepts as a model (a config
    dict in the form ``load_gpt`` reads back)."""
    name, kwargs, _ = _parse(name_or_config, model_kwargs)
    return {"gpt_model": name, **kwargs}


def build_gpt(name_or_config: Any, **model_kwargs) -> Transformer:
    """Build a randomly initialised GPT from a preset name, a dict or a YAML file (``gpt_model`` + ModelArgs)."""
    name, kwargs, _ = _parse(name_or_config, model_kwargs)
    return GPT_models[name](**kwargs)


def load_gpt(name_or_config: Any, checkpoint: Optional[str | os.PathLike] = None, device: str | torch.device = "cpu",
             dtype: Optional[torch.dtype] = None, **model_kwargs) -> Transformer:
    """Build a GPT and load ``checkpoint`` strictly; returns it in eval mode on ``device`` (and ``dtype``).

    ``name_or_config`` is a preset name (``"GPT-B"``), or a dict / YAML path with ``gpt_model`` and any
    :class:`~autoregressive.models.gpt.ModelArgs` fields (optionally under a ``gpt:`` section, and optionally a
    ``gpt_ckpt``). ``model_kwargs`` override the config (e.g. ``vocab_size=16384, block_size=256``).
    ``name_or_config`` may also be a released GPT's name (``"GPT-B_VQ_XLXXL"``) or a ``save_pretrained`` folder /
    ``hf://OWNER/REPO`` (its ``config.json`` and ``model.safetensors``).
    ``checkpoint`` is a local file, a released file name on the Hub (``GPT_B256_e300_VQ_XLXXL.pt``) or
    ``hf://OWNER/REPO/FILE``; the weights come from its ``model`` entry (else ``module``, else ``state_dict``,
    else the file is a bare state dict), with ``module.`` / ``_orig_mod.`` prefixes stripped. Any missing,
    unexpected or mis-shaped key raises ``utils.checkpoint.CheckpointError``. Without a checkpoint the model
    keeps its random initialisation.
    """
    name, kwargs, cfg_ckpt = _parse(name_or_config, model_kwargs)
    checkpoint = checkpoint if checkpoint is not None else cfg_ckpt
    if checkpoint is None:
        model = GPT_models[name](**kwargs)
    else:
        # Every tensor of the model is in the state dict, so skip the random init and fill from the file.
        with torch.device("meta"):
            model = GPT_models[name](**kwargs)
        model = model.to_empty(device="cpu")
        context = f"GPT preset {name}" + (f" with {kwargs}" if kwargs else "")
        load_weights(model, checkpoint, context=context, entries=GPT_CHECKPOINT_ENTRIES)
    model = model.to(device=device, dtype=dtype) if dtype is not None else model.to(device)
    return model.eval()


def add_variant_flags(parser) -> None:
    """The original's GPT variant switches, accepted so its command lines parse; none is used by a released GPT, and
    building a model with one of them raises (argparse parser or argument group)."""
    parser.add_argument("--rope", action="store_true",
                        help="the original's 1D RoPE variant (unused by the released GPTs and broken there); not "
                             "implemented here: building the model raises")
    parser.add_argument("--adaLN", action="store_true",
                        help="the original's adaLN-modulated blocks (unused by the released GPTs); not implemented "
                             "here: building the model raises")
    parser.add_argument("--simple-adaLN", action="store_true",
                        help="the original's simple adaLN (one shared modulation Linear plus a per-block offset; "
                             "unused by the released GPTs); not implemented here: building the model raises")
