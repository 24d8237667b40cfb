"""Build a GPT from a preset name or a small config and load its weights strictly."""
from __future__ import annotations

import json
import os
from dataclasses import fields
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

import torch

from autoregressive.models.gpt import INERT_ARGS, UNIMPLEMENTED_VARIANTS, GPT_models, ModelArgs, Transformer
from tokenizer.resolution import resample_grid_rows
from utils.checkpoint import (
    PRETRAINED_WEIGHTS,
    ModelDescription,
    is_checkpoint_file,
    load_weights,
    read_model_description,
    settle_flags,
)
from utils.config import ConfigError, check_keys, load_config, to_plain
from utils.pretrained import GPT_CONFIG, pretrained_folder

__all__ = ["load_gpt", "build_gpt", "gpt_config_of", "add_variant_flags", "GPT_CHECKPOINT_ENTRIES", "GPT_FLAGS",
           "gpt_description", "settle_gpt_flags", "gpt_build_config"]

# The original samplers read checkpoint["model"], else ["module"] (DeepSpeed), else ["state_dict"];
# an "ema" entry, if a file had one, is ignored by them, so it is ignored here too.
GPT_CHECKPOINT_ENTRIES = ("model", "module", "state_dict")
# the builders also take the original's variant switches (refused when on) and its inert kernel switch
_ARG_NAMES = ({f.name for f in fields(ModelArgs)} - {"dim", "n_layer", "n_head"}) | set(UNIMPLEMENTED_VARIANTS) | set(
    INERT_ARGS)


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
    if is_checkpoint_file(name_or_config):  # a checkpoint that stores its model (e.g. a GPT training checkpoint)
        name, kwargs = _from_description(gpt_description(name_or_config), model_kwargs)
        return name, kwargs, os.fspath(name_or_config)
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
    ``hf://OWNER/REPO`` (its ``config.json`` and ``model.safetensors``), or a checkpoint file that describes its model
    (a training checkpoint's ``gpt_config``: ``load_gpt("exp/checkpoints/0001000.pt")``); then ``checkpoint``
    defaults to that file and ``model_kwargs`` must agree with the stored config (a ConfigError names the
    disagreement), except the training-only ones (dropout, init). A file that stores no config (a released file,
    bare weights) still needs its preset, as before.
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


# ----- checkpoints that describe their model -------------------------------------------------------------------------
# Model arguments that only matter while training (dropout, init): a caller may set them freely on a described
# checkpoint. Every other argument changes the weights' shapes or the outputs and must agree with the checkpoint.
TRAINING_ONLY_ARGS = {"token_dropout_p", "attn_dropout_p", "resid_dropout_p", "ffn_dropout_p", "drop_path_rate",
                      "class_dropout_prob", "initializer_range", "use_flash_attn"}

# The GPT model flags of the entry points: (flag, argparse attribute, gpt_config key, default). The default applies
# only when neither the flag nor the checkpoint gives the value (a released file or a bare state dict): as before.
GPT_FLAGS = (
    ("--gpt-model", "gpt_model", "gpt_model", "GPT-B"),
    ("--num-classes", "num_classes", "num_classes", 1000),
    ("--cls-token-num", "cls_token_num", "cls_token_num", 1),
    ("--qk-norm", "qk_norm", "use_qk_norm", False),
    ("--gpt-2d", "gpt_2d", "gpt_2d", False),
)


def gpt_description(checkpoint: str | os.PathLike) -> ModelDescription:
    """What a GPT checkpoint says about its model (:func:`utils.checkpoint.read_model_description`). A released
    file named as on the Hub (``GPT_B256_e300_VQ_XLXXL.pt``, not a local path) is not read: released files are
    described by the name registry and the flags, as they always were."""
    from utils.released import find_gpt

    text = os.fspath(checkpoint)
    if not Path(text).exists() and find_gpt(Path(text).name) is not None and "/" not in text:
        return ModelDescription(text, 0)
    return read_model_description(checkpoint)


def _from_description(description: ModelDescription, model_kwargs: Mapping) -> tuple[str, dict]:
    """(preset, constructor kwargs) of a described GPT checkpoint; ``model_kwargs`` must agree with it except on
    :data:`TRAINING_ONLY_ARGS`."""
    source = description.source
    if description.kind == "tokenizer":
        raise ConfigError(f"{source!r} is a tokenizer checkpoint (it stores a tokenizer config): load it with "
                          "tokenizer.load_tokenizer")
    if description.kind != "gpt":
        raise ConfigError(f"{source!r} stores no GPT config (a released file or bare weights): name the model, "
                          f"e.g. load_gpt('GPT-B', {source!r}, vocab_size=16384, block_size=256, num_classes=1000)")
    config = dict(description.config)
    check_keys(config, _ARG_NAMES | {"gpt_model"}, f"{source}: gpt_config")
    name = config.pop("gpt_model")
    if name not in GPT_models:
        raise ConfigError(f"{source!r} stores gpt_model={name!r}, which is not a preset ({sorted(GPT_models)})")
    clashes = [f"{key}={value!r} (the checkpoint has {config[key]!r})" for key, value in model_kwargs.items()
               if key in config and key not in TRAINING_ONLY_ARGS and value != config[key]]
    if clashes:
        raise ConfigError(f"the GPT checkpoint {source} describes its model, and the given arguments contradict it: "
                          f"{'; '.join(clashes)}")
    return name, {**config, **model_kwargs}


def settle_gpt_flags(args: Any, checkpoint: str | os.PathLike,
                     flags: Iterable[tuple[str, str, str, Any]] = GPT_FLAGS) -> ModelDescription:
    """Fill the entry point's GPT model flags (:data:`GPT_FLAGS`, None = not given) from the checkpoint's stored
    config, or refuse one that contradicts it (one ConfigError naming the flag, the checkpoint's value and the given
    one); a checkpoint without a config keeps the flags and their old defaults. Returns the description."""
    description = gpt_description(checkpoint)
    stored = description.config if description.kind == "gpt" else None
    settle_flags(args, stored, flags, os.fspath(checkpoint))
    return description


def gpt_build_config(args: Any, description: ModelDescription, vocab_size: int, block_size: int,
                     tokenizer_label: str = "the tokenizer", num_classes_attr: str = "num_classes") -> dict:
    """The ``load_gpt`` config of an entry point: the checkpoint's stored model arguments, the settled flags (see
    :func:`settle_gpt_flags`) and the tokenizer's vocabulary and token count, which must be the ones the GPT was
    trained with."""
    stored = dict(description.config) if description.kind == "gpt" else {}
    for key, value in (("vocab_size", vocab_size), ("block_size", block_size)):
        if key in stored and int(stored[key]) != int(value):
            raise ConfigError(f"the GPT checkpoint {description.source} was trained with {key}={stored[key]}, but "
                              f"{tokenizer_label} gives {key}={value}: use the tokenizer the GPT was trained on")
    return {**stored, "gpt_model": args.gpt_model, "vocab_size": int(vocab_size), "block_size": int(block_size),
            "num_classes": int(getattr(args, num_classes_attr)), "cls_token_num": int(args.cls_token_num),
            "use_qk_norm": bool(args.qk_norm), "gpt_2d": bool(args.gpt_2d)}


CLASS_TABLE = "cls_embedding.embedding_table.weight"


def remap_class_table(weights: dict, model: torch.nn.Module, num_classes: int, class_map: Optional[str] = None,
                      log: Any = None) -> dict:
    """``weights`` of a GPT trained on another class set, fitted to ``model``'s ``num_classes``: every class row is
    ``model``'s own (fresh) one unless ``class_map`` (a JSON file ``{new class id: old class id}``) copies it from the
    weights; the weights' last row, their null class (the unconditional embedding classifier-free guidance contrasts
    with; the released GPTs have one), is kept when ``model`` has a null row too."""
    own = model.state_dict()[CLASS_TABLE]
    if CLASS_TABLE not in weights or weights[CLASS_TABLE].shape == own.shape:
        return weights
    old, table = weights[CLASS_TABLE], own.detach().clone().cpu()
    mapping = {int(new): int(old_id) for new, old_id in json.loads(Path(class_map).read_text()).items()} \
        if class_map else {}
    for new_id, old_id in mapping.items():
        if not (0 <= new_id < num_classes and 0 <= old_id < old.shape[0] - 1):
            raise ConfigError(f"--class-map {class_map}: {new_id} -> {old_id} is outside the {num_classes} new or "
                              f"{old.shape[0] - 1} old classes")
        table[new_id] = old[old_id]
    if own.shape[0] == num_classes + 1:
        table[-1] = old[-1]
    if log is not None:
        log(f"class table: {old.shape[0] - 1} -> {num_classes} classes; {len(mapping)} rows copied by --class-map, "
            "the others new; the null row kept")
    return {**weights, CLASS_TABLE: table.to(old.dtype)}


POSITION_TABLE = "positional_embedding"


def fit_position_table(weights: dict, model: torch.nn.Module, token_grid: tuple[int, int], log: Any = None) -> dict:
    """``weights`` of a GPT trained on another token count, fitted to ``model``'s sequence: a 2D tokenizer fine-tuned
    at another resolution has another grid (32 -> 64 px: 8x8 -> 16x16 codes, a 4x longer sequence). The learned
    absolute table (the class slot, then one row per code in the codes' raster order) is resampled as timm's
    ``resample_abs_pos_embed`` does for ViTs: bicubic on the token grid, the class slot's row kept as it is; a 1D
    tokenizer's ``(1, N)`` grid is a line, so its rows are resampled along the sequence. A resampled table is a start,
    not a result: the fine-tune has to train it. The 2D GPT (``gpt_2d``) has no table: its rotary tables are computed
    from the model's ``block_size``, so it takes another grid without any change to its weights."""
    own = model.state_dict().get(POSITION_TABLE)
    if own is None or POSITION_TABLE not in weights or weights[POSITION_TABLE].shape == own.shape:
        return weights
    table, prefix = weights[POSITION_TABLE], int(model.cls_token_num)
    old_n, new_n = table.shape[0] - prefix, own.shape[0] - prefix
    rows, cols = (int(g) for g in token_grid)
    old_side = int(old_n ** 0.5 + 0.5)
    old_grid = (1, old_n) if rows == 1 else (old_side, old_side)
    if rows * cols != new_n or old_grid[0] * old_grid[1] != old_n or table.shape[1:] != own.shape[1:]:
        raise ConfigError(f"the starting GPT's position table {tuple(table.shape)} cannot be resampled to this "
                          f"model's {tuple(own.shape)} for a {rows}x{cols} token grid (a 2D tokenizer's codes need a "
                          "square grid in both)")
    resized = resample_grid_rows(table, old_grid, (rows, cols), prefix)
    if log is not None:
        log(f"resampled {POSITION_TABLE}: {old_grid[0]}x{old_grid[1]} -> {rows}x{cols} token grid (bicubic), the "
            "class slot's row kept")
    return {**weights, POSITION_TABLE: resized}
