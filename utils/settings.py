"""Typed settings: one dataclass field per setting, from which everything else is derived.

A trainer declares its settings once, as fields made by :func:`setting`. From that one declaration come

- the command-line flag(s) (:func:`add_flags`; the flag's default is ``None`` so "not given" can be told apart),
- the keys a YAML section may hold and their types (:func:`section_keys`, :func:`resolve`),
- the value: the flag if given, else the YAML section's value, else the field's default (:func:`resolve`),
- the resume check: every field is compared with the checkpoint's unless declared ``schedule_only``
  (:func:`resume_changes`), so a new setting is checked without anyone having to remember to list it.

Adding a setting is one field plus its use.
"""
from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any

from utils.config import ConfigError

__all__ = ["setting", "add_flags", "resolve", "section_keys", "section_types", "as_record", "resume_changes",
           "flag_names"]

_NO_DEFAULT = dataclasses.MISSING


def setting(default: Any = _NO_DEFAULT, help: str = "", *, flags: tuple[str, ...] | None = None,  # noqa: A002
            yaml: bool | str = True, schedule_only: bool = False, choices: Iterable[Any] | None = None,
            group: str = "settings", required: bool = False) -> Any:
    """A settings field.

    ``flags``: its spellings on the command line (default ``--<name-with-dashes>``; ``()`` for none).
    ``yaml``: whether a YAML section (e.g. a tokenizer config's ``trainer:``) may set it; a string is its key there
    when that differs from the field's name.
    ``schedule_only``: it changes only how long, how often or where, never what is trained, so a resume may change
    it. ``required``: there is no default; leaving it unset is an error naming the flag.
    """
    metadata = {"help": help, "flags": flags, "yaml": yaml, "schedule_only": schedule_only,
                "choices": list(choices) if choices is not None else None, "group": group, "required": required}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda value=default: type(value)(value), metadata=metadata)
    return dataclasses.field(default=None if default is _NO_DEFAULT else default, metadata=metadata)


def _fields(cls) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if "flags" in f.metadata]


def flag_names(field: dataclasses.Field) -> tuple[str, ...]:
    flags = field.metadata["flags"]
    return ("--" + field.name.replace("_", "-"),) if flags is None else tuple(flags)


def _type_of(cls, field: dataclasses.Field) -> tuple[type, bool]:
    """(base type, whether None is allowed) of a field annotated ``int``, ``float | None``, ``list[str]``, ..."""
    hint = typing.get_type_hints(cls)[field.name]
    optional = False
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        members = [m for m in typing.get_args(hint) if m is not type(None)]
        optional, hint = len(members) < len(typing.get_args(hint)), members[0]
    return (typing.get_origin(hint) or hint), optional


def _coerce(cls, field: dataclasses.Field, value: Any, where: str) -> Any:
    """``value`` as the field's type; ``where`` names it in errors (``--lr``, ``trainer.lr``)."""
    base, optional = _type_of(cls, field)
    if value is None or (optional and base in (int, float) and str(value).lower() == "none"):
        if optional or field.metadata["required"]:
            return None
        raise ConfigError(f"{where} cannot be null")
    try:
        if base is bool:
            if isinstance(value, str) and value.lower() in ("true", "false"):
                return value.lower() == "true"
            if not isinstance(value, bool):
                raise TypeError
            return value
        if base is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise TypeError
            return int(value)
        if base is float:
            if isinstance(value, bool):
                raise TypeError
            return float(value)  # YAML reads 5e-3 as a string; float() accepts it
        if base is list:
            if not isinstance(value, (list, tuple)):
                raise TypeError
            return list(value)
        return str(value) if base is str else value
    except (TypeError, ValueError):
        raise ConfigError(f"{where} must be {base.__name__}"
                          f"{' or null' if optional else ''}, got {value!r}") from None


def add_flags(parser: argparse.ArgumentParser, cls, groups: dict[str, str] | None = None) -> None:
    """Add every field of ``cls`` that has flags to ``parser`` (in argument groups named by ``groups``: field group ->
    title). A flag that is not given leaves no attribute (``argparse.SUPPRESS``): :func:`resolve` then applies the
    YAML value, then the field's default (which the help shows)."""
    made: dict[str, Any] = {}
    for field in _fields(cls):
        flags = flag_names(field)
        if not flags:
            continue
        title = (groups or {}).get(field.metadata["group"], field.metadata["group"])
        if title not in made:
            made[title] = parser.add_argument_group(title)
        base, optional = _type_of(cls, field)
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
        shown = "" if field.metadata["required"] else f" (default: {default})"
        kwargs: dict[str, Any] = {"dest": field.name, "default": argparse.SUPPRESS,
                                  "help": field.metadata["help"] + shown}
        if field.metadata["choices"] is not None:
            kwargs["choices"] = field.metadata["choices"]
        if base is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif base is list:
            kwargs["nargs"] = "*"
        else:
            # 'None' on the command line: off, for optional numbers (a string such as a precision keeps its text)
            numeric_optional = optional and base in (int, float)
            kwargs["type"] = (lambda text, b=base: None if text.lower() == "none" else b(text)) \
                if numeric_optional else base
        made[title].add_argument(*flags, **kwargs)


def _yaml_key(field: dataclasses.Field) -> str | None:
    spelling = field.metadata["yaml"]
    return (spelling if isinstance(spelling, str) else field.name) if spelling else None


def section_keys(cls) -> set[str]:
    """The keys a YAML section may hold for ``cls``."""
    return {_yaml_key(f) for f in _fields(cls) if _yaml_key(f)}


def section_types(cls) -> dict[str, str]:
    """YAML key -> the field's annotation (for :func:`utils.config.check_types`)."""
    return {_yaml_key(f): f.type for f in _fields(cls) if _yaml_key(f)}


def resolve(cls, args: argparse.Namespace | Mapping[str, Any] | None = None,
            section: Mapping[str, Any] | None = None, source: str = "settings", **fixed: Any):
    """An instance of ``cls``: for each field the flag's value if given (not None), else ``section[name]`` (a YAML
    section; unknown keys are an error naming them), else the field's default. ``fixed`` values win over all."""
    given = vars(args) if isinstance(args, argparse.Namespace) else dict(args or {})
    section = dict(section or {})
    unknown = sorted(set(section) - section_keys(cls))
    if unknown:
        raise ConfigError(f"unknown key(s) in {source}: {unknown} (known: {sorted(section_keys(cls))})")
    values = {}
    for field in _fields(cls):
        if field.name in fixed:
            values[field.name] = fixed[field.name]
        elif given.get(field.name) is not None:
            values[field.name] = _coerce(cls, field, given[field.name], (flag_names(field) or (field.name,))[0])
        elif _yaml_key(field) in section:
            key = _yaml_key(field)
            values[field.name] = _coerce(cls, field, section[key], f"{source}.{key}")
        elif field.metadata["required"]:
            name = flag_names(field)[0] if flag_names(field) else f"{source}.{_yaml_key(field) or field.name}"
            raise ConfigError(f"{name} is required")
        else:
            continue  # the field's default
    return cls(**values)


def as_record(settings) -> dict[str, Any]:
    """The settings as a plain, JSON- and weights_only-safe dict (stored in checkpoints and args.json)."""
    return {k: (str(v) if not isinstance(v, (int, float, str, bool, list, dict, type(None))) else v)
            for k, v in dataclasses.asdict(settings).items()}


def resume_changes(stored: Mapping[str, Any], settings, compare_missing: bool = True) -> list[str]:
    """``name: old -> new`` for every field that is not schedule-only and differs from the checkpoint's record.
    A field the checkpoint does not record (written before the setting existed) is compared with its default, or
    left out with ``compare_missing=False`` (records of the version-0 format, which kept only some settings)."""
    changes = []
    current = as_record(settings)
    for field in _fields(type(settings)):
        if field.metadata["schedule_only"]:
            continue
        if field.name not in stored and not compare_missing:
            continue
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
        old = stored.get(field.name, default)
        if old != current[field.name]:
            changes.append(f"{field.name}: {old!r} -> {current[field.name]!r}")
    return changes
