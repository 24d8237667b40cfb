"""Tokenizer config schema: which keys each section may hold, and turning a config into model arguments.

Configs keep the original's layout (``model.model_cls`` + ``model.init_args``, ``trainer``, ``loss.params``).
Unknown keys are rejected by their dotted name.
"""
from __future__ import annotations

from dataclasses import fields
from typing import Any

from omegaconf import DictConfig

from utils.config import ConfigError, check_keys, check_types, load_config, to_plain
from utils.settings import section_keys, section_types

from .losses.vq_loss import LossSettings
from .models.vq_model import MODEL_CLASSES, arg_names

TOP_LEVEL_KEYS = {"model", "trainer", "loss"}
MODEL_KEYS = {"model_cls", "init_args", "causal_settings", "init_ckpt"}
LOSS_PARAM_KEYS = section_keys(LossSettings)
CAUSAL_KEYS = {"causal_type", "dynamic_length_train", "dynamic_level_range", "min_level"}
LOSS_KEYS = {"loss_cls", "params"}
# Width of the semantic teacher's features, which sets the distill head's output size.
DISTILL_DIMS = {"dinov2-vit-l": 1024, "dinov2-vit-b": 768, "dinov2-vit-s": 384, "siglip-sovit-400m": 1152,
                "clip_dfn-vit-l/14": 1024}


# Keys the original accepts but that change nothing in anything it (or this project) can build: allowed only at the
# value that has no effect, so a setting that would silently be ignored is an error instead.
NO_EFFECT = {
    "loss.params.gamma": (15, "it is the R1/R2 weight of the r3gan discriminator loss, which is not implemented"),
    "loss.params.resnet_perceptual": (False, "the original never reads it; the perceptual loss is LPIPS-VGG"),
    "loss.params.codebook_weight": (1.0, "the original never applies it (the quantiser terms have weight 1)"),
    "model.causal_settings.dynamic_length_train": (False, "it needs a causal tokenizer (causal_type), which is not "
                                                          "supported"),
    "model.causal_settings.min_level": (0, "it needs a causal tokenizer (causal_type), which is not supported"),
    "model.causal_settings.dynamic_level_range": (None, "it needs a causal tokenizer (causal_type), which is not "
                                                        "supported"),
    "trainer.distill_model_path": (None, "give a local teacher weights file with --teacher-weights instead"),
}


def _check_no_effect(cfg: DictConfig) -> None:
    for dotted, (inert, why) in NO_EFFECT.items():
        section, *path = dotted.split(".")
        node = cfg.get(section)
        for key in path[:-1]:
            node = node.get(key) if node is not None else None
        if node is None or path[-1] not in node:
            continue
        value = node.get(path[-1])
        if value != inert:
            raise ConfigError(f"{dotted}={value!r} has no effect: {why}; remove it or set {inert!r}")
    loss_size = ((cfg.get("loss") or {}).get("params") or {}).get("image_size")
    model_size = (cfg.model.get("init_args") or {}).get("image_size")
    if loss_size is not None and model_size is not None and int(loss_size) != int(model_size):
        raise ConfigError(f"loss.params.image_size={loss_size} differs from model.init_args.image_size={model_size}; "
                          "it only sizes the original's StyleGAN discriminator (not implemented), so it must equal "
                          "the model's image size")


def validate_config(cfg: DictConfig) -> None:
    """Reject unknown keys anywhere in the schema, naming the full dotted key."""
    check_keys(cfg, TOP_LEVEL_KEYS, "<config>")
    if "model" not in cfg:
        raise ConfigError("config has no 'model' section")
    model = cfg.model
    check_keys(model, MODEL_KEYS, "model")
    cls = model.get("model_cls")
    if cls not in MODEL_CLASSES:
        raise ConfigError(f"model.model_cls must be one of {list(MODEL_CLASSES)}, got {cls!r}")
    check_keys(model.get("init_args") or {}, arg_names(cls), "model.init_args")
    check_keys(model.get("causal_settings") or {}, CAUSAL_KEYS, "model.causal_settings")
    causal = (model.get("causal_settings") or {}).get("causal_type")
    if causal is not None:
        raise ConfigError(f"model.causal_settings.causal_type={causal!r} is not supported (only null)")
    from tokenizer.train_options import TokenizerTrainSettings  # the trainer's settings define the section

    check_keys(cfg.get("trainer") or {}, section_keys(TokenizerTrainSettings), "trainer")
    check_types(to_plain(cfg.get("trainer") or {}), section_types(TokenizerTrainSettings), "trainer")
    loss = cfg.get("loss") or {}
    check_keys(loss, LOSS_KEYS, "loss")
    check_keys(loss.get("params") or {}, LOSS_PARAM_KEYS, "loss.params")
    check_types(to_plain(loss.get("params") or {}), section_types(LossSettings), "loss.params")
    _check_no_effect(cfg)


def read_tokenizer_config(config: Any, overrides: list[str] | None = None) -> DictConfig:
    """Load (path, dict or DictConfig), apply dotted overrides, and validate."""
    cfg = load_config(config, overrides)
    validate_config(cfg)
    return cfg


def model_args(cfg: DictConfig):
    """The dataclass of model arguments for ``cfg`` (out_inner_dim filled from the teacher as the original)."""
    cls_name = cfg.model.model_cls
    init_args = dict(to_plain(cfg.model.get("init_args") or {}))
    trainer = cfg.get("trainer") or {}
    if trainer.get("distill_loss", False) and "out_inner_dim" not in init_args:
        teacher = trainer.get("distill_model", "dinov2-vit-b")
        if teacher not in DISTILL_DIMS:
            raise ConfigError(f"trainer.distill_model must be one of {list(DISTILL_DIMS)}, got {teacher!r}")
        init_args["out_inner_dim"] = DISTILL_DIMS[teacher]
    args_cls = MODEL_CLASSES[cls_name][1]
    types = {f.name: f.type for f in fields(args_cls)}
    check_types(init_args, types, "model.init_args")
    for key, value in init_args.items():  # numeric strings (YAML's 5e-3) of float fields become floats
        if isinstance(value, str) and str(types.get(key)).startswith("float"):
            init_args[key] = float(value)
    return args_cls(**init_args)
