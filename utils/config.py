"""YAML configs read with OmegaConf: loading, dotted command-line overrides, and key validation.

The original silently ignores misspelled keys in most sections; here every section that has a schema
rejects unknown keys by their full dotted name, so a typo never trains the wrong model.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Mapping

from omegaconf import DictConfig, ListConfig, OmegaConf


class ConfigError(ValueError):
    """A config is malformed: unknown key, missing required key, or bad value. The message names the key."""


def load_config(config: Any, overrides: Iterable[str] | None = None) -> DictConfig:
    """Read a YAML path, dict or DictConfig into a fresh DictConfig and apply ``key.sub=value`` overrides.

    Overrides use OmegaConf's dotlist syntax (``model.init_args.rot=false``). A key that does not exist
    in the config is an error, so a typo in an override is caught too.
    """
    if isinstance(config, (str, os.PathLike)):
        path = Path(config)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        cfg = OmegaConf.load(path)
    elif isinstance(config, DictConfig):
        cfg = OmegaConf.create(OmegaConf.to_container(config, resolve=True))
    elif isinstance(config, Mapping):
        cfg = OmegaConf.create(dict(config))
    else:
        raise ConfigError(f"config must be a YAML path, a dict or an OmegaConf DictConfig, not {type(config).__name__}")
    if not isinstance(cfg, DictConfig):
        raise ConfigError("config must be a mapping at the top level")
    for item in overrides or ():
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        key, value = item.split("=", 1)
        key = key.strip().lstrip("+")
        if OmegaConf.select(cfg, key, default="__missing__") == "__missing__" and not item.startswith("+"):
            raise ConfigError(f"override {item!r}: key {key!r} is not in the config (prefix with '+' to add it)")
        OmegaConf.update(cfg, key, OmegaConf.create({"v": _parse_scalar(value)})["v"], merge=True, force_add=True)
    return cfg


def _parse_scalar(text: str) -> Any:
    """Parse an override value as YAML (numbers, booleans, null, lists), falling back to the raw string."""
    import yaml
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def to_plain(cfg: Any) -> Any:
    """A DictConfig/ListConfig as plain Python containers (resolved); other values unchanged."""
    if isinstance(cfg, (DictConfig, ListConfig)):
        return OmegaConf.to_container(cfg, resolve=True)
    return cfg


def check_keys(section: Mapping, allowed: Iterable[str], where: str) -> None:
    """Raise ConfigError naming the first unknown key of ``section`` (dotted path ``where.key``)."""
    allowed = set(allowed)
    unknown = [k for k in section if k not in allowed]
    if unknown:
        raise ConfigError(
            f"unknown config key {where + '.' + str(unknown[0])!r}"
            + (f" (and {len(unknown) - 1} more: {unknown[1:]})" if len(unknown) > 1 else "")
            + f"; allowed keys in {where!r}: {sorted(allowed)}")


def as_float(value: Any, name: str) -> float:
    """Numbers such as ``1e-4`` load as strings under YAML 1.1; accept both, reject anything else by name."""
    try:
        return float(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"config key {name!r} must be a number, got {value!r}") from exc


def save_config(cfg: Any, path: str | os.PathLike) -> Path:
    """Write the resolved config as YAML (next to checkpoints and results)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cfg = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(to_plain(cfg))
    path.write_text(OmegaConf.to_yaml(cfg, resolve=True))
    return path


_TYPE_NAMES = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,), "list": (list, tuple),
               "tuple": (list, tuple), "dict": (dict,), "None": (type(None),)}


def _allowed(spec) -> tuple | None:
    """Python types a value of a field annotated ``spec`` (a type, or its string form such as "int | None") may
    have; None when the annotation says nothing checkable."""
    if isinstance(spec, type):
        spec = spec.__name__
    names = [part.strip() for part in str(spec).replace("Optional[", "").replace("]", "").split("|")]
    if not all(n in _TYPE_NAMES for n in names):
        return None
    return tuple(t for n in names for t in _TYPE_NAMES[n])


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def check_types(values: Mapping, expected: Mapping, section: str) -> None:
    """Reject values of the wrong type by dotted key: a YAML string for a bool ("no" would be truthy) or a number
    ("abc"), a bool for a number, ... ``expected`` maps key -> type or annotation string."""
    for key, value in values.items():
        if key not in expected:
            continue
        allowed = _allowed(expected[key])
        if allowed is None:
            continue
        wrong_bool = isinstance(value, bool) and bool not in allowed
        if float in allowed and isinstance(value, str) and _is_number(value):
            continue  # YAML reads 1e-4 (no dot) as a string; as_float converts it where the value is used
        if wrong_bool or not isinstance(value, allowed):
            names = " or ".join(sorted({t.__name__ if t is not type(None) else "null" for t in allowed}))
            raise ConfigError(f"{section}.{key} must be {names}, got {value!r} ({type(value).__name__})")
