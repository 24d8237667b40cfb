"""Checkpoint I/O shared by every model: Hub resolution, safe loading, key clean-up, atomic saving.

One place decides how a user-supplied checkpoint string becomes a state dict, so tokenizers and GPTs
follow the same rules (local file, released file name on the Hub, or ``hf://OWNER/REPO/FILE``).
"""
from __future__ import annotations

import argparse
import hashlib
import os
import re
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch

DEFAULT_HUB_REPO = "YuuTennYi/GigaTok"
STRIP_PREFIXES = ("module.", "_orig_mod.")
WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")
PRETRAINED_WEIGHTS = "model.safetensors"  # the weights file of a save_pretrained folder
CONVERT_COMMAND = "python -m autoregressive.convert_checkpoint"


class CheckpointError(RuntimeError):
    """A checkpoint could not be found, read, or matched to a model. The message names the file."""


def resolve_checkpoint(spec: str | os.PathLike, default_repo: str = DEFAULT_HUB_REPO) -> Path:
    """Turn a checkpoint string into a local file path, downloading from the Hub when needed.

    * an existing local path is returned as is;
    * ``hf://OWNER/REPO/path/in/repo.pt`` is fetched from that Hub repository;
    * a bare released file name (``VQ_SS256_e100.pt``) is fetched from ``default_repo``;
    * a ``save_pretrained`` folder, or ``hf://OWNER/REPO`` (a Hub repository holding one), gives its
      ``model.safetensors``; a sharded training checkpoint folder is returned as is (``load_checkpoint_file`` reads it).
    Downloads go through ``huggingface_hub`` and its cache, so ``HF_HUB_OFFLINE=1`` works with a
    pre-filled cache.
    """
    text = os.fspath(spec)
    path = Path(text).expanduser()
    from utils.sharded_checkpoint import is_sharded_checkpoint

    if path.is_file() or is_sharded_checkpoint(path):
        return path
    if path.is_dir() and (path / PRETRAINED_WEIGHTS).is_file():
        return path / PRETRAINED_WEIGHTS
    if path.exists():
        raise CheckpointError(f"checkpoint path {text!r} is a folder without {PRETRAINED_WEIGHTS} (a save_pretrained "
                              "folder holds one), not a checkpoint file")
    if text.startswith("hf://"):
        parts = text[len("hf://"):].split("/")
        if len(parts) == 2 and all(parts):  # a save_pretrained repository
            return _hub_download(text[len("hf://"):], PRETRAINED_WEIGHTS, text)
        if len(parts) < 3 or not all(parts):
            raise CheckpointError(f"Hub checkpoint {text!r} must look like hf://OWNER/REPO/FILE or hf://OWNER/REPO")
        return _hub_download("/".join(parts[:2]), "/".join(parts[2:]), text)
    if os.sep in text or "/" in text or not text.endswith(WEIGHT_SUFFIXES):
        raise CheckpointError(
            f"checkpoint file {text!r} does not exist (give a local file, a released file name such as "
            f"'VQ_SS256_e100.pt', or hf://OWNER/REPO/FILE)")
    return _hub_download(default_repo, text, text)


def _hub_download(repo_id: str, filename: str, original: str) -> Path:
    try:
        from huggingface_hub import hf_hub_download
    except ImportError as exc:  # pragma: no cover - huggingface_hub is a hard dependency
        raise CheckpointError("huggingface_hub is needed to download checkpoints from the Hub") from exc
    try:
        return Path(hf_hub_download(repo_id=repo_id, filename=filename))
    except Exception as exc:  # noqa: BLE001 - every hub failure becomes one clear message
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
        hint = (" HF_HUB_OFFLINE is set and the file is not in the local Hub cache "
                f"({os.environ.get('HF_HUB_CACHE') or os.environ.get('HF_HOME') or '~/.cache/huggingface'})."
                if offline else "")
        raise CheckpointError(
            f"could not get checkpoint {original!r} (repo {repo_id!r}, file {filename!r}) from the "
            f"Hugging Face Hub: {type(exc).__name__}: {exc}.{hint}") from exc


def load_checkpoint_file(path: str | os.PathLike, map_location: str | torch.device = "cpu",
                         mmap: bool = False) -> dict:
    """Read a checkpoint without unpickling arbitrary objects.

    ``.safetensors`` files are read with safetensors; anything else with ``torch.load(weights_only=True)``,
    allowing ``argparse.Namespace`` because the original training scripts store their args in it. ``mmap=True``
    memory-maps the file (every rank of a node then shares the page cache when resuming). A sharded checkpoint folder
    (``utils.sharded_checkpoint``) is consolidated into the same dict in memory.
    """
    path = Path(path)
    from utils.sharded_checkpoint import consolidate, is_sharded_checkpoint
    if is_sharded_checkpoint(path):
        try:
            return consolidate(path)
        except Exception as exc:  # noqa: BLE001
            raise CheckpointError(f"could not read the sharded checkpoint {str(path)!r}: {type(exc).__name__}: "
                                  f"{exc}") from exc
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {str(path)!r} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            return load_file(str(path), device=str(map_location))
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"could not read checkpoint {str(path)!r} ({path.stat().st_size} bytes): "
                              f"{_unreadable_reason(exc, path)}") from exc
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"checkpoint {str(path)!r} holds a {type(obj).__name__}, not a dict")
    return dict(obj)


def _unreadable_reason(exc: Exception, path: Path) -> str:
    """Why torch/safetensors refused a file, in one sentence. A file that pickles other Python types is never
    unpickled here; the message names the type and the one command that can convert it, for a file one trusts."""
    text = str(exc)
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if found:
        return (f"it pickles the Python type {found.group(1)}, which the safe loader does not execute; only "
                "tensors, containers and argparse.Namespace are read. If you trust the file's source, convert it "
                f"once to safetensors: {CONVERT_COMMAND} {str(path)!r} OUT_DIR --trust-pickle")
    if "WeightsUnpickler" in text or "invalid load key" in text or "zip" in text.lower() or "header" in text.lower():
        return "it is not a readable PyTorch or safetensors checkpoint (truncated, corrupt or another format)"
    first = text.splitlines()[0] if text else ""
    return f"{type(exc).__name__}: {first}; the file may be truncated, corrupt or not a checkpoint"


def _is_state_dict(obj: Mapping) -> bool:
    return len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


def select_state_dict(ckpt: Mapping, source: str = "<checkpoint>",
                      entries: Iterable[str] = ("ema", "model", "state_dict")) -> dict[str, torch.Tensor]:
    """Pick the weights entry the original scripts use (``ema`` first, then ``model``, then ``state_dict``).

    A bare state dict (all values tensors) is accepted as is.
    """
    for name in entries:
        if name in ckpt and isinstance(ckpt[name], Mapping):
            return dict(ckpt[name])
    if _is_state_dict(ckpt):
        return dict(ckpt)
    raise CheckpointError(
        f"checkpoint {source!r} has none of the entries {list(entries)} and is not a bare state dict "
        f"(top-level keys: {sorted(map(str, ckpt))[:20]})")


def strip_prefixes(state_dict: Mapping[str, torch.Tensor],
                   prefixes: Iterable[str] = STRIP_PREFIXES) -> dict[str, torch.Tensor]:
    """Remove leading DDP (``module.``) and torch.compile (``_orig_mod.``) prefixes, in any combination."""
    prefixes = tuple(prefixes)
    out = {}
    for key, value in state_dict.items():
        while key.startswith(prefixes):
            key = key[len(next(p for p in prefixes if key.startswith(p))):]
        out[key] = value
    return out


def load_state_dict_strict(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor],
                           source: str = "<checkpoint>", context: str = "") -> None:
    """``load_state_dict(strict=True)`` with an error that lists missing, unexpected and mis-shaped keys."""
    check_state_dict(model.state_dict(), state_dict, source, context)
    model.load_state_dict(dict(state_dict), strict=True)


def check_state_dict(own: Mapping[str, torch.Tensor], state_dict: Mapping[str, torch.Tensor],
                     source: str = "<checkpoint>", context: str = "") -> None:
    """Raise CheckpointError unless ``state_dict`` has exactly the keys and shapes of ``own`` (a model's state
    dict; meta tensors suffice, so a large model can be checked without memory) and finite float values."""
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    mismatched = [f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
                  for k in own if k in state_dict and tuple(state_dict[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or mismatched:
        def _fmt(items: list[str], limit: int = 15) -> str:
            more = f" ... and {len(items) - limit} more" if len(items) > limit else ""
            return ", ".join(items[:limit]) + more
        lines = [f"checkpoint {source!r} does not match the model{(' built from ' + context) if context else ''}:"]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): {_fmt(missing)}")
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): {_fmt(unexpected)}")
        if mismatched:
            lines.append(f"  shape mismatches ({len(mismatched)}): {_fmt(mismatched)}")
        lines.append("  Is the config/model name the one this checkpoint was trained with?")
        raise CheckpointError("\n".join(lines))
    bad = [k for k, v in state_dict.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(f"checkpoint {source!r} holds non-finite (NaN/inf) weights in {len(bad)} tensor(s): "
                              f"{', '.join(bad[:10])}{' ...' if len(bad) > 10 else ''}; it would give black images "
                              "and meaningless metrics (use an earlier checkpoint)")


def load_weights(model: torch.nn.Module, checkpoint: str | os.PathLike, context: str = "",
                 entries: Iterable[str] = ("ema", "model", "state_dict"),
                 default_repo: str = DEFAULT_HUB_REPO) -> Path:
    """Resolve, read, select, clean and strictly load ``checkpoint`` into ``model``; returns the file used."""
    path = resolve_checkpoint(checkpoint, default_repo=default_repo)
    ckpt = load_checkpoint_file(path)
    state_dict = strip_prefixes(select_state_dict(ckpt, str(path), entries))
    load_state_dict_strict(model, state_dict, source=str(path), context=context)
    return path


def remove_stale_temp_files(folder: str | os.PathLike) -> list[Path]:
    """Delete what interrupted checkpoint writes left in ``folder``: :func:`save_atomic`'s ``.<name>.*.tmp`` files and
    the staging folders of sharded saves (``.<step>.partial``)."""
    import shutil

    removed = []
    for tmp in [*Path(folder).glob(".*.tmp"), *Path(folder).glob(".*.partial")] if Path(folder).is_dir() else []:
        try:
            shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()
            removed.append(tmp)
        except OSError:
            pass
    return removed


def save_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename over ``path``.

    A run killed mid-write leaves the previous file intact and never a truncated one under the final name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the usual permissions of a new file
        os.replace(tmp, path)
        _fsync_dir(path.parent)  # make the rename itself durable
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. platforms without directory file descriptors
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, for recording exactly which weights produced a result."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------------------------------------------------
# step checkpoint folders (``checkpoints/%07d.pt``) shared by the trainers
# --------------------------------------------------------------------------------------------------------------------

STEP_CKPT_RE = re.compile(r"^(\d+)(\.pt)?$")  # interrupted writes (".name.*.tmp", ".name.partial") never match


def list_step_checkpoints(folder: str | os.PathLike | None) -> list[tuple[int, Path]]:
    """Complete step checkpoints of a folder as (step, path), oldest first: ``%07d.pt`` files and sharded ``%07d/``
    folders; [] for a missing folder."""
    from utils.sharded_checkpoint import is_sharded_checkpoint

    if folder is None or not Path(folder).is_dir():
        return []
    return sorted((int(m.group(1)), p) for p in Path(folder).iterdir() if (m := STEP_CKPT_RE.match(p.name))
                  and (p.is_file() if m.group(2) else is_sharded_checkpoint(p)))


def prune_step_checkpoints(folder: str | os.PathLike, milestone_step: int, milestone_start: int,
                           max_milestone_num: int, max_none_milestone_num: int) -> list[Path]:
    """The original's checkpoint retention (``manage_ckpt_num``); returns the deleted paths.

    Milestones are the steps >= ``milestone_start`` on the ``milestone_step`` grid: the newest ``max_milestone_num``
    are kept (0: none). Other checkpoints older than the newest milestone are deleted, and of the rest the newest
    ``max_none_milestone_num`` are kept. ``max_none_milestone_num < 0`` keeps everything.
    """
    if max_none_milestone_num < 0:
        return []
    steps = [s for s, _ in list_step_checkpoints(folder)]
    milestones = [s for s in steps if s >= milestone_start and (s - milestone_start) % milestone_step == 0]
    others = [s for s in steps if s not in milestones]
    drop = set(milestones[:-max_milestone_num] if max_milestone_num > 0 else milestones)
    if milestones:
        drop |= {s for s in others if s < milestones[-1]}
    kept_others = [s for s in others if s not in drop]
    drop |= set(kept_others[:-max_none_milestone_num] if max_none_milestone_num > 0 else kept_others)
    from utils.sharded_checkpoint import remove_checkpoint

    removed = []
    for step, path in list_step_checkpoints(folder):
        if step in drop:
            remove_checkpoint(path)
            removed.append(path)
    return removed


# --------------------------------------------------------------------------------------------------------------------
# what a checkpoint says about its model (``format_version``)
# --------------------------------------------------------------------------------------------------------------------
# Version 0: files written before ``format_version`` existed. This project's trainers already stored the model's
# description then (GPT: ``gpt_config``; tokenizer: ``config``, the YAML as a dict); the original's checkpoints store
# only their training ``args``, from which a partial GPT description is read. Version 1 adds ``format_version`` and,
# in GPT checkpoints, the tokenizer's config (``tokenizer_config``). save_pretrained folders record their version in
# the safetensors header (metadata ``format_version``), so config.yaml / config.json stay plain model configs.

# The newest layout this code reads and writes. Training checkpoints: 0 = files written before the number existed
# (the launch's args, the GPT's gpt_config, the tokenizer's config/run_settings/rank_states); 1 = "args" holds every
# resolved setting, the model is described by gpt_config (+ tokenizer_config) or config, no RNG or sampler state.
FORMAT_VERSION = 1
SAFETENSORS_VERSION_KEY = "format_version"
# GPT settings the original's training args name differently from the model arguments (args name -> model argument)
_GPT_ARG_NAMES = {"gpt_model": "gpt_model", "num_classes": "num_classes", "qk_norm": "use_qk_norm",
                  "gpt_2d": "gpt_2d", "cls_token_num": "cls_token_num", "class_dropout_prob": "class_dropout_prob"}


@dataclass(frozen=True)
class ModelDescription:
    """The model a checkpoint describes. ``config`` is None for a file that stores none (a released file, a bare
    state dict): such a file is built from a name, a config or flags, as before checkpoints described themselves."""
    source: str                                 # the file or folder read, for messages
    format_version: int                         # 0: written before format_version existed
    kind: str | None = None                     # "gpt", "tokenizer", or None when nothing is stored
    config: dict | None = None                  # GPT: gpt_model + model arguments; tokenizer: its YAML as a dict
    partial: bool = False                       # config pieced together from training args: only some keys
    tokenizer_config: dict | None = None        # GPT checkpoints (version 1): the tokenizer the GPT was trained on
    train_args: dict = field(default_factory=dict)  # the stored training arguments as a plain dict ({} if none)


def is_checkpoint_file(spec: Any) -> bool:
    """``spec`` names one checkpoint (local ``.pt`` / ``.pth`` / ``.bin`` / ``.ckpt`` / ``.safetensors``, a sharded
    training checkpoint folder, or ``hf://OWNER/REPO/FILE``) rather than a config, a preset or a released model's
    name."""
    from utils.sharded_checkpoint import is_sharded_checkpoint

    if not isinstance(spec, (str, os.PathLike)):
        return False
    text = os.fspath(spec)
    if is_sharded_checkpoint(text):
        return True
    if text.startswith("hf://"):
        return len(text[len("hf://"):].split("/")) >= 3 and text.endswith(WEIGHT_SUFFIXES)
    return Path(text).expanduser().is_file() and text.endswith(WEIGHT_SUFFIXES)


def _plain_args(args: Any) -> dict:
    if isinstance(args, argparse.Namespace):
        return dict(vars(args))
    return dict(args) if isinstance(args, Mapping) else {}


def _describe_v0(ckpt: Mapping, source: str, version: int = 0) -> ModelDescription:
    """Version 0 (and the keys version 1 shares with it): ``gpt_config`` or ``config``, else the original's args."""
    train_args = _plain_args(ckpt.get("args"))
    if isinstance(ckpt.get("gpt_config"), Mapping):
        return ModelDescription(source, version, "gpt", dict(ckpt["gpt_config"]), train_args=train_args)
    config = ckpt.get("config")
    if isinstance(config, Mapping) and isinstance(config.get("model"), Mapping):
        return ModelDescription(source, version, "tokenizer", dict(config), train_args=train_args)
    # The original GPT trainer: only its argparse settings. They name the preset and a few model arguments, but not
    # the vocabulary or sequence length (those came from the tokenizer), so the description is partial.
    from_args = {model_key: train_args[arg] for arg, model_key in _GPT_ARG_NAMES.items() if arg in train_args}
    if "gpt_model" in from_args:
        return ModelDescription(source, version, "gpt", from_args, partial=True, train_args=train_args)
    return ModelDescription(source, version, train_args=train_args)


def _describe_v1(ckpt: Mapping, source: str) -> ModelDescription:
    """Version 1: version 0's keys, plus the tokenizer config a GPT was trained on."""
    found = _describe_v0(ckpt, source, version=1)
    tokenizer_config = ckpt.get("tokenizer_config")
    if isinstance(tokenizer_config, Mapping):
        found = replace(found, tokenizer_config=dict(tokenizer_config))
    return found


_DESCRIBE = {0: _describe_v0, 1: _describe_v1}  # one reader per format version


def format_version_of(ckpt: Mapping, source: str = "<checkpoint>") -> int:
    """The checkpoint's ``format_version`` (0 when absent); a version newer than this code reads is an error."""
    version = ckpt.get("format_version", 0)
    if isinstance(version, torch.Tensor):  # never written so, but a state dict may hold anything
        version = int(version)
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise CheckpointError(f"checkpoint {source!r} has format_version={version!r}, not a version number")
    if version > FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {source!r} has format_version {version}; this gigatok reads versions up to "
                              f"{FORMAT_VERSION}: update gigatok to read it")
    return version


def describe_checkpoint(ckpt: Mapping, source: str = "<checkpoint>") -> ModelDescription:
    """The model description stored in an already-read checkpoint dict (see :class:`ModelDescription`)."""
    if _is_state_dict(ckpt):
        return ModelDescription(source, 0)  # bare weights: nothing stored
    version = format_version_of(ckpt, source)
    return _DESCRIBE[version](ckpt, source)


def read_model_description(checkpoint: str | os.PathLike, default_repo: str = DEFAULT_HUB_REPO) -> ModelDescription:
    """What the checkpoint ``checkpoint`` (anything :func:`resolve_checkpoint` takes) says about its model: a
    training checkpoint its ``gpt_config`` / ``config`` (and version 1 a GPT's ``tokenizer_config``); a
    ``save_pretrained`` folder its config.json (GPT) or config.yaml (tokenizer). Reading is as safe as loading the
    weights (``weights_only``, memory-mapped) and never builds a model."""
    folder = _pretrained_folder_of(checkpoint)
    if folder is not None:
        return _describe_folder(folder)
    path = resolve_checkpoint(checkpoint, default_repo=default_repo)
    if path.suffix == ".safetensors":  # a bare weights file: maybe the weights of a save_pretrained folder
        if path.name == PRETRAINED_WEIGHTS and any((path.parent / name).is_file() for name in _FOLDER_CONFIGS):
            return _describe_folder(path.parent)
        return ModelDescription(str(path), _safetensors_version(path))
    return describe_checkpoint(load_checkpoint_file(path, mmap=True), str(path))


_FOLDER_CONFIGS = {"config.json": "gpt", "config.yaml": "tokenizer"}  # as utils.pretrained.KINDS


def _pretrained_folder_of(spec: str | os.PathLike) -> Path | None:
    """A local ``save_pretrained`` folder, or the local snapshot of ``hf://OWNER/REPO``; None for anything else."""
    text = os.fspath(spec)
    if text.startswith("hf://"):
        parts = text[len("hf://"):].split("/")
        if len(parts) == 2 and all(parts):
            weights = _hub_download(text[len("hf://"):], PRETRAINED_WEIGHTS, text)
            for name in _FOLDER_CONFIGS:
                try:
                    _hub_download(text[len("hf://"):], name, text)
                except CheckpointError:
                    continue
            return weights.parent
        return None
    path = Path(text).expanduser()
    return path if path.is_dir() and (path / PRETRAINED_WEIGHTS).is_file() else None


def _safetensors_version(path: Path) -> int:
    try:
        from safetensors import safe_open
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"could not read checkpoint {str(path)!r}: {type(exc).__name__}: {exc}") from exc
    return format_version_of({"format_version": int(metadata.get(SAFETENSORS_VERSION_KEY, 0))}, str(path))


def _describe_folder(folder: Path) -> ModelDescription:
    """A save_pretrained folder: its config file is the description; the version is in the weights' header."""
    import json

    import yaml

    version = _safetensors_version(folder / PRETRAINED_WEIGHTS)
    for name, kind in _FOLDER_CONFIGS.items():
        config_file = folder / name
        if not config_file.is_file():
            continue
        try:
            text = config_file.read_text()
            config = json.loads(text) if name.endswith(".json") else yaml.safe_load(text)
        except (OSError, ValueError, yaml.YAMLError) as exc:
            raise CheckpointError(f"{str(config_file)!r} is not readable: {exc}") from exc
        if not isinstance(config, dict):
            raise CheckpointError(f"{str(config_file)!r} holds a {type(config).__name__}, not a config mapping")
        return ModelDescription(str(folder), version, kind, config)
    return ModelDescription(str(folder), version)


def settle_flags(args: argparse.Namespace, stored: Mapping[str, Any] | None,
                 flags: Iterable[tuple[str, str, str, Any]], source: str) -> list[str]:
    """Fill command-line model flags from a checkpoint's stored description, and refuse flags that contradict it.

    ``flags``: ``(flag, attribute of args, key in stored, default)``; an attribute that is None was not given. A
    stored key wins over the default; a given flag must equal the stored value. Every contradiction is named in
    one ConfigError (flag, checkpoint value, given value), so a wrong model is never built silently. Returns the
    flags taken from the checkpoint (for a log line).
    """
    from utils.config import ConfigError

    stored = stored or {}
    taken, clashes = [], []
    for flag, attr, key, default in flags:
        given = getattr(args, attr, None)
        if key not in stored or stored[key] is None:
            setattr(args, attr, default if given is None else given)
            continue
        value = stored[key]
        if given is None:
            setattr(args, attr, value)
            taken.append(flag)
        elif not _same_setting(given, value):
            clashes.append(f"{flag} {given!r} (the checkpoint has {key}={value!r})")
    if clashes:
        raise ConfigError(f"the checkpoint {source} describes its model, and "
                          f"{'this flag contradicts' if len(clashes) == 1 else 'these flags contradict'} it: "
                          f"{'; '.join(clashes)}. Drop the flag (the checkpoint's value is used) or give the "
                          "checkpoint it describes")
    return taken


def _same_setting(given: Any, stored: Any) -> bool:
    """Equal as settings: 10 == 10.0 and True == True, but never True == 1 (a bool flag against a count)."""
    if isinstance(given, bool) or isinstance(stored, bool):
        return isinstance(given, bool) and isinstance(stored, bool) and given == stored
    return given == stored
