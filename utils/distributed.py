"""Process-group set-up that works the same under ``python`` and ``torchrun``, on CPU or GPU.

Scripts call :func:`init_distributed` once; it reads the torchrun environment, picks NCCL when the chosen
device is CUDA and gloo otherwise, and returns a small record every driver uses instead of globals.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """A process group runs: several ranks, or one forced by GIGATOK_FORCE_DIST=1."""
        return self.world_size > 1 or (dist.is_available() and dist.is_initialized())


_announced: set[str] = set()


def mps_available() -> bool:
    """Apple's Metal backend is built into this torch and usable on this machine."""
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def pick_device(requested: str | None = None, local_rank: int = 0) -> torch.device:
    """``auto``/None -> ``cuda:<local_rank>`` when CUDA is usable, else Apple ``mps``, else ``cpu``; the choice is
    printed once per process (by rank 0), so a run on the wrong device is visible. Never requires nvidia-smi."""
    auto = requested in (None, "", "auto")
    if auto:
        requested = "cuda" if torch.cuda.is_available() else "mps" if mps_available() else "cpu"
    if requested == "mps" and not mps_available():
        raise RuntimeError("device 'mps' was requested but Apple's MPS backend is not available; use --device cpu")
    device = torch.device(requested)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {requested!r} was requested but CUDA is not available; use --device cpu")
        if device.index is None:
            device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    if auto and str(device) not in _announced and os.environ.get("RANK", "0") == "0":
        _announced.add(str(device))
        why = {"cuda": "CUDA", "mps": "Apple MPS (no CUDA device)", "cpu": "no CUDA or MPS device"}[device.type]
        print(f"[gigatok] --device auto: running on {device} ({why})", file=sys.stderr, flush=True)
    return device


def init_distributed(device: str | None = None) -> DistInfo:
    """Initialise torch.distributed when launched by torchrun (WORLD_SIZE > 1); otherwise a single process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if launched_by_torchrun():
        from utils.runlock import die_with_parent
        die_with_parent()  # a killed launcher takes its workers with it
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local_rank)
    # GIGATOK_FORCE_DIST=1: a process group (and so DDP / FSDP2 wrapping) also for one torchrun process, to exercise
    # the NCCL/DDP/FSDP code paths on a single GPU (benchmarks/device_check.sh)
    force = os.environ.get("GIGATOK_FORCE_DIST") == "1" and launched_by_torchrun()
    if (world_size > 1 or force) and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size,
                                device_id=dev if dev.type == "cuda" else None)
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


def launched_by_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ or ("LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ)


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def finish() -> None:
    """End of a successful distributed job: every rank leaves together, then the group is destroyed (a gloo rank
    that tears down while a peer still works can abort with 'terminate called without an active exception'). Two
    barriers: returning from the first does not mean every peer has finished its messages of it (gloo), returning
    from the second does, so no rank tears its connections down under a peer still using them."""
    barrier()
    barrier()
    cleanup()


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_gather_tensor(t: torch.Tensor) -> torch.Tensor:
    """Concatenate a tensor from every rank along dim 0 (sizes may differ); identity without a group."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return t
    world = dist.get_world_size()
    size = torch.tensor([t.shape[0]], device=t.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    max_n = int(max(s.item() for s in sizes))
    padded = torch.zeros((max_n, *t.shape[1:]), dtype=t.dtype, device=t.device)
    padded[: t.shape[0]] = t
    gathered = [torch.zeros_like(padded) for _ in range(world)]
    dist.all_gather(gathered, padded)
    return torch.cat([g[: int(s.item())] for g, s in zip(gathered, sizes, strict=True)], dim=0)


# ----- collectives the trainers use (each a no-op in a single process) -----------------------------------------------

def is_distributed() -> bool:
    """True when a process group with more than one rank is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@torch.no_grad()
def broadcast_module(module: torch.nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s parameters and buffers to every rank (what DDP does for the module it wraps)."""
    if not is_distributed():
        return
    for t in [*module.parameters(), *module.buffers()]:
        dist.broadcast(t.data, src=src)


def allreduce_grads(params) -> None:
    """Average the gradients of ``params`` over ranks in one flat all-reduce (for modules DDP does not wrap)."""
    if not is_distributed():
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch._utils._flatten_dense_tensors(grads)
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    for g, f in zip(grads, torch._utils._unflatten_dense_tensors(flat, grads), strict=True):
        g.copy_(f)


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """The mean of ``t`` over ranks (in place; returned for chaining)."""
    if is_distributed():
        dist.all_reduce(t)
        t /= dist.get_world_size()
    return t


def gather_objects(obj):
    """Every rank's ``obj`` as a list indexed by rank (``[obj]`` in a single process)."""
    if not is_distributed():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def any_rank(bad: torch.Tensor | bool, message: str | None, device: torch.device) -> list[str]:
    """All ranks learn together whether any rank is in trouble (a true ``bad`` or a ``message``), so that all of them
    stop at the same collective. Returns every troubled rank's message (an empty list when all are fine)."""
    if isinstance(bad, torch.Tensor):
        flag = bad.detach().float().reshape(1).to(device)
    else:
        flag = torch.tensor([float(bad)], device=device)
    if message is not None:
        flag.fill_(1.0)
    if is_distributed():
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    if flag.item() == 0:
        return []
    messages = gather_objects(message)
    return [f"rank {r}: {m}" for r, m in enumerate(messages) if m] or ["(non-finite value without a message)"]
