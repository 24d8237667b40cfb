"""Sharded training checkpoints through ``torch.distributed.checkpoint`` (DCP).

A sharded checkpoint is a folder ``checkpoints/%07d/``: every rank writes its own shards of the model, the optimiser
moments and the EMA (``__<rank>_0.distcp`` files and DCP's ``.metadata``); no rank gathers the whole state. Everything
else (settings, the model's description, step, GradScalers, the discriminator, ...) is small and replicated: rank 0
writes it to ``meta.pt`` (weights-only loadable). The folder is written under a temporary name and renamed when every
rank has finished, so an interrupted save never leaves a folder under a step's name.

Loading reshards: a checkpoint written by N FSDP ranks resumes on M ranks, under DDP or in one process
(DCP stores each tensor's global shape and every shard's place in it). :func:`consolidate` reads one into memory as
the full checkpoint dict a ``.pt`` file holds (``model`` / ``optimizer`` / ``ema`` + ``meta.pt``), which is how
``load_checkpoint_file``, the loaders and ``convert_checkpoint`` read a sharded folder.

DCP's ``.metadata`` is a pickle; it is read with an unpickler that only builds DCP's metadata classes and plain
containers (:class:`SafeFileSystemReader`), so reading a sharded checkpoint unpickles nothing else.
"""
from __future__ import annotations

import enum
import io
import os
import pickle
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from utils.ema import EMA

META_NAME = "meta.pt"
_DCP_METADATA = ".metadata"


def is_sharded_checkpoint(path: str | os.PathLike) -> bool:
    """A complete sharded checkpoint folder (DCP metadata and ``meta.pt`` present)."""
    path = Path(path)
    return path.is_dir() and (path / _DCP_METADATA).is_file() and (path / META_NAME).is_file()


def _dcp_enum_member(cls: Any, name: str) -> enum.Enum:
    """``getattr(cls, name)`` for a member of one of DCP's own enums (e.g. the memory format of a tensor's
    properties), the only use of ``getattr`` in its metadata; anything else is refused (a general ``getattr`` would let
    a crafted pickle reach arbitrary attributes)."""
    if isinstance(cls, type) and issubclass(cls, enum.Enum) and cls.__module__.startswith(
            "torch.distributed.checkpoint.") and isinstance(name, str) and name in cls.__members__:
        return cls[name]
    raise pickle.UnpicklingError(f"sharded checkpoint metadata asks for the attribute {name!r} of {cls!r}, which is "
                                 "not a member of a torch.distributed.checkpoint enum: refusing to unpickle it")


class _MetadataUnpickler(pickle.Unpickler):
    """Builds only DCP's metadata dataclasses, torch sizes / dtypes / memory formats and plain containers."""

    ALLOWED = {("torch", "Size"), ("torch", "device"), ("collections", "OrderedDict"),
               ("torch.serialization", "_get_layout"),  # a layout from its name
               ("pathlib", "PosixPath"), ("pathlib", "PurePosixPath"),  # the checkpoint id DCP records
               *(("builtins", name) for name in ("dict", "list", "tuple", "set", "frozenset", "int", "float", "str",
                                                 "bytes", "bool", "slice", "object"))}

    def find_class(self, module: str, name: str) -> Any:
        if module.startswith("torch.distributed.checkpoint.") or (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        if (module, name) == ("builtins", "getattr"):  # how Python 3.11.0-3.11.3 pickle an Enum member
            return _dcp_enum_member
        if module == "torch" and isinstance(getattr(torch, name, None), (torch.dtype, torch.memory_format)):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"sharded checkpoint metadata refers to {module}.{name}, which is not part of "
                                     "torch.distributed.checkpoint's metadata: refusing to unpickle it")


def _safe_reader(path: Path):
    from torch.distributed.checkpoint import FileSystemReader

    class SafeFileSystemReader(FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any):
            with open(Path(self.path) / _DCP_METADATA, "rb") as fh:
                metadata = _MetadataUnpickler(io.BytesIO(fh.read())).load()
            from torch.distributed.checkpoint.metadata import StorageMeta
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return SafeFileSystemReader(path)


def training_state(model: nn.Module, optimizer: torch.optim.Optimizer, ema_shadow: dict | None) -> dict:
    """The sharded state of a run (DTensors under FSDP2, plain tensors otherwise), keyed by parameter name."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optimizer_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optimizer": optimizer_state}
    if ema_shadow is not None:
        state["ema"] = ema_shadow
    return state


def save_sharded(folder: Path, state: dict, meta: dict, is_main: bool) -> Path:
    """Every rank writes its shards of ``state`` (collective); rank 0 writes ``meta``; the folder appears under its
    final name only once complete."""
    import torch.distributed.checkpoint as dcp

    from utils.checkpoint import save_atomic
    from utils.distributed import barrier

    folder = Path(folder)
    staging = folder.with_name(f".{folder.name}.partial")
    if is_main:
        shutil.rmtree(staging, ignore_errors=True)  # an interrupted earlier save of this step
        staging.mkdir(parents=True)
    barrier()
    dcp.save(state, checkpoint_id=str(staging))
    if is_main:
        save_atomic(meta, staging / META_NAME)
        if folder.exists():  # the same step saved before (a rerun): replace it whole
            shutil.rmtree(folder)
        os.replace(staging, folder)
    barrier()
    return folder


def load_sharded(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer, ema_shadow: dict | None) -> None:
    """Load a sharded checkpoint into a live model, optimiser and EMA of any world size (collective). Parameters
    that never had a gradient have no optimiser moments in the checkpoint and keep fresh ones (partial load)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
    from torch.distributed.checkpoint.state_dict import set_state_dict

    state = training_state(model, optimizer, ema_shadow)  # the live tensors, filled in place
    dcp.load(state, storage_reader=_safe_reader(Path(folder)), planner=DefaultLoadPlanner(allow_partial_load=True))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])


def load_training_state(folder: Path, meta: dict, model: nn.Module, optimizer: torch.optim.Optimizer,
                        ema: EMA | None) -> list[str]:
    """Resume a run from the sharded checkpoint ``folder`` whose ``meta.pt`` is ``meta`` (collective): every rank
    reads its own shards of the model, the optimiser and, when the writing run kept one (its recorded ``args.ema``),
    the EMA, resharded to this run's layout. An EMA the checkpoint lacks starts as a copy of the loaded weights.
    Returns what was loaded, for the log."""
    with_ema = ema is not None and meta["args"].get("ema", False)
    load_sharded(folder, model, optimizer, ema.shadow if with_ema else None)
    loaded = ["model", "optimizer"]
    if with_ema:
        loaded.append("ema")
    elif ema is not None:
        ema.load_state_dict(dict(model.named_parameters()))
        loaded.append("ema (from the model)")
    return loaded


def read_meta(folder: str | os.PathLike) -> dict:
    from utils.checkpoint import load_checkpoint_file

    return load_checkpoint_file(Path(folder) / META_NAME)


def consolidate(folder: str | os.PathLike) -> dict:
    """The whole checkpoint in this process's memory, as a full ``.pt`` checkpoint holds it (no process group)."""
    from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    state: dict = {}
    _load_state_dict(state, storage_reader=_safe_reader(Path(folder)), planner=_EmptyStateDictLoadPlanner(),
                     no_dist=True)
    if "ema" in state and "model" in state:  # the EMA averages parameters: the model's buffers complete it
        state["ema"] = {key: state["ema"].get(key, value) for key, value in state["model"].items()}
    return {**read_meta(folder), **state}


def remove_checkpoint(path: Path) -> None:
    """Delete a ``%07d.pt`` file or a sharded ``%07d/`` folder."""
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
