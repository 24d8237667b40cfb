"""Linear probing with the MAE recipe, on any feature extractor (tokenizer encoder, GPT hidden states, ...).

What the original's two probes share (MAE ``main_linprobe.py``):

* head: ``BatchNorm1d(D, affine=False, eps=1e-6)`` then ``Linear(D, num_classes)``; the Linear weight is
  trunc-normal with std 0.01, its bias keeps PyTorch's default init; plain BatchNorm (no SyncBN) under DDP;
* LARS: momentum 0.9, trust coefficient 0.001, weight decay (default 0); trust-ratio scaling and weight decay only for
  tensors with ndim > 1 (the head weight), the bias gets plain momentum SGD;
* lr = blr * global_batch / 256 with blr 0.1 (the original: global batch = batch_per_gpu * world_size), set every
  optimiser step from the fractional epoch: linear warm-up from 0 over 10 epochs, then half-cosine to min_lr 0 at the
  last epoch (90 in all);
* cross-entropy; top-1 / top-5 accuracy = correct / total, counts all-reduced across ranks.

Features are produced per batch by ``feature_fn(images)`` under ``no_grad`` (the extractor is never trained); with
``feature_fn=None`` the loader yields features directly (pre-extracted tensors).

Global batch. The published probes ran 128 images per GPU on 64 GPUs: one optimiser step over 8192 images, whose
BatchNorm normalised each GPU's 128 on its own. Here a step may be accumulated over micro-batches
(:class:`ProbeBatchSampler` + ``train_linear_probe(accum_steps=...)``): each global batch is cut into the same chunks
the original's 64 ranks took (``DistributedSampler`` strides), every chunk goes through the BatchNorm alone, the
gradients are averaged, and only the first chunk of each step updates the running statistics (the original's rank 0,
whose buffers DDP broadcasts). So one step equals the original's 64-GPU step on any number of processes.
"""
from __future__ import annotations

import contextlib
import json
import math
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from utils.data import ImageFolderDataset, collate_skip_bad, train_transform
from utils.training import PRECISIONS, autocast_dtype, configure_tf32


class LinearProbeHead(nn.Module):
    def __init__(self, dim: int, num_classes: int = 1000):
        super().__init__()
        self.bn = nn.BatchNorm1d(dim, affine=False, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=0.01)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.head(self.bn(feats))


class LARS(torch.optim.Optimizer):
    """LARS as in MAE: weight decay and the trust ratio apply to ndim > 1 tensors only; no lr scaling per layer
    beyond the trust ratio ``trust_coefficient * |w| / |g + wd w|`` (1 when either norm is 0)."""

    def __init__(self, params, lr: float = 0.0, weight_decay: float = 0.0, momentum: float = 0.9,
                 trust_coefficient: float = 0.001):
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum,
                                      trust_coefficient=trust_coefficient))

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                update = p.grad
                if p.ndim > 1:
                    update = update.add(p, alpha=group["weight_decay"])
                    w_norm, u_norm = torch.norm(p), torch.norm(update)
                    one = torch.ones_like(w_norm)
                    ratio = torch.where(w_norm > 0,
                                        torch.where(u_norm > 0, group["trust_coefficient"] * w_norm / u_norm, one),
                                        one)
                    update = update.mul(ratio)
                state = self.state[p]
                if "mu" not in state:
                    state["mu"] = torch.zeros_like(p)
                mu = state["mu"]
                mu.mul_(group["momentum"]).add_(update)
                p.add_(mu, alpha=-group["lr"])
        return loss


@dataclass
class ProbeConfig:
    epochs: int = 90
    warmup_epochs: int = 10
    blr: float = 0.1
    min_lr: float = 0.0
    weight_decay: float = 0.0
    momentum: float = 0.9
    trust_coefficient: float = 0.001
    abs_lr: float | None = None  # the original's --lr: used as is instead of the blr rule

    def lr(self, batch_per_gpu: int, world_size: int = 1) -> float:
        if self.abs_lr is not None:
            return float(self.abs_lr)
        return self.blr * batch_per_gpu * world_size / 256


def lr_at(epoch: float, base_lr: float, cfg: ProbeConfig) -> float:
    """MAE ``adjust_learning_rate``: linear warm-up, then half-cosine to ``min_lr`` at ``cfg.epochs``."""
    if epoch < cfg.warmup_epochs:
        return base_lr * epoch / cfg.warmup_epochs
    span = max(cfg.epochs - cfg.warmup_epochs, 1e-12)
    return cfg.min_lr + (base_lr - cfg.min_lr) * 0.5 * (1.0 + math.cos(math.pi * (epoch - cfg.warmup_epochs) / span))


def _dist_on() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@contextlib.contextmanager
def _running_stats_frozen(module: nn.Module):
    """BatchNorm layers normalise with the batch's statistics but leave their running buffers (and the batch count)
    alone inside the block: the micro-batches after a step's first stand for the original's ranks 1.., whose running
    statistics DDP overwrote with rank 0's."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    for m in norms:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in norms:
            m.track_running_stats = True


def train_linear_probe(head: nn.Module, loader: Iterable, cfg: ProbeConfig | None = None,
                       feature_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
                       device: str | torch.device = "cpu", batch_per_gpu: int | None = None,
                       start_epoch: int = 0, optimizer: torch.optim.Optimizer | None = None,
                       on_epoch_end: Callable[[int, nn.Module, torch.optim.Optimizer, int], None] | None = None,
                       log: Callable[[str], None] | None = None, set_epoch: Callable[[int], None] | None = None,
                       progress: bool = False, accum_steps: int = 1) -> list[dict]:
    """Train ``head`` for ``cfg.epochs`` epochs; returns per-epoch {epoch, loss, lr, steps}.

    One optimiser step takes ``accum_steps`` consecutive batches of the loader (micro-batches; leftovers at the end of
    an epoch that do not fill a step are skipped, as a ``drop_last`` loader does). Each micro-batch passes the head on
    its own (its own BatchNorm statistics; only the step's first updates the running ones), the loss is the mean of
    the micro-batch means, so the gradient equals DDP's average over as many ranks. ``batch_per_gpu`` (default: the
    loader's ``batch_size``) x ``accum_steps`` x the world size is the global batch that sets the absolute lr. Under
    an initialised process group of size > 1 the head is wrapped in DDP (gradients all-reduced once per step).
    ``on_epoch_end(epoch, head, optimizer, steps)`` is the place to checkpoint; ``set_epoch`` is called with the
    epoch number first (the sampler's ``set_epoch``). ``progress`` shows a tqdm bar over all optimiser steps.
    """
    cfg = cfg or ProbeConfig()
    if accum_steps < 1:
        raise ValueError(f"accum_steps must be >= 1, got {accum_steps}")
    device = torch.device(device)
    head = head.to(device)
    world = dist.get_world_size() if _dist_on() else 1
    bpg = batch_per_gpu or getattr(loader, "batch_size", None)
    if not bpg:
        raise ValueError("batch_per_gpu is needed when the loader has no batch_size attribute")
    base_lr = cfg.lr(bpg * accum_steps, world)
    model = head
    ddp = _dist_on()
    if ddp:
        model = nn.parallel.DistributedDataParallel(head, device_ids=[device.index] if device.type == "cuda" else None)
    opt = optimizer or LARS(head.parameters(), lr=base_lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum,
                            trust_coefficient=cfg.trust_coefficient)
    n_iter = len(loader) // accum_steps  # type: ignore[arg-type]  # optimiser steps per epoch
    history, steps = [], start_epoch * n_iter
    bar = tqdm(total=cfg.epochs * n_iter, initial=steps, disable=not progress, desc="linear probe", dynamic_ncols=True)
    for epoch in range(start_epoch, cfg.epochs):
        if set_epoch is not None:
            set_epoch(epoch)
        model.train()
        total_loss, count = 0.0, 0
        lr = base_lr
        for i, (x, y) in enumerate(loader):
            if i >= n_iter * accum_steps:
                break  # not a whole global batch
            it, micro = divmod(i, accum_steps)
            if micro == 0:
                lr = lr_at(it / n_iter + epoch, base_lr, cfg)
                for group in opt.param_groups:
                    group["lr"] = lr
                opt.zero_grad(set_to_none=True)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if feature_fn is not None:
                with torch.no_grad():
                    x = feature_fn(x)
            last = micro == accum_steps - 1
            # DDP all-reduces only on the step's last micro-batch; the others accumulate locally
            with (model.no_sync() if ddp and not last else contextlib.nullcontext()), \
                    (_running_stats_frozen(head) if micro > 0 else contextlib.nullcontext()):
                loss = F.cross_entropy(model(x.float()), y)
                (loss / accum_steps).backward()
            total_loss += float(loss.detach()) * len(y)
            count += len(y)
            if last:
                opt.step()
                steps += 1
                bar.update(1)
        rec = {"epoch": epoch, "loss": total_loss / max(count, 1), "lr": lr, "steps": steps}
        history.append(rec)
        if log is not None:
            log(f"epoch {epoch}: loss {rec['loss']:.4f} lr {lr:.6f}")
        if on_epoch_end is not None:
            on_epoch_end(epoch, head, opt, steps)
    bar.close()
    return history


class ProbeBatchSampler(torch.utils.data.Sampler):
    """This process's micro-batches of the probe's training data, as dataset index lists (a ``batch_sampler``).

    Epoch ``e`` draws the permutation ``DistributedSampler(shuffle=True, seed=seed)`` draws (``randperm(N)`` seeded
    by ``seed + e``) and cuts it into global batches of ``global_batch`` (the incomplete last one is dropped). A global
    batch splits into ``global_batch // micro_batch`` chunks by stride, chunk ``j`` = positions ``j, j + C, j + 2C, ..``
    (``C`` chunks): the batches of the original's ``C`` ranks (its DistributedSampler gives each rank every
    ``C``-th index, its drop_last DataLoader cuts them into batches). Process ``rank`` of ``world`` takes chunks
    ``a * world + rank`` for ``a = 0 .. accum_steps - 1``. So the chunks of a step, and the BatchNorm batches, do not
    depend on the number of processes, and with ``global_batch = micro_batch * world`` each process gets exactly the
    original's per-rank batches.
    """

    def __init__(self, dataset_len: int, micro_batch: int, global_batch: int, rank: int = 0, world_size: int = 1,
                 seed: int = 0, shuffle: bool = True):
        if micro_batch < 1 or global_batch % (micro_batch * world_size):
            raise ValueError(f"the global batch {global_batch} must be a multiple of the batch per process "
                             f"{micro_batch} x {world_size} processes")
        self.n, self.micro, self.global_batch = dataset_len, micro_batch, global_batch
        self.rank, self.world, self.seed, self.shuffle, self.epoch = rank, world_size, seed, shuffle, 0
        self.chunks = global_batch // micro_batch
        self.accum_steps = self.chunks // world_size
        self.steps_per_epoch = dataset_len // global_batch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self):
        if self.shuffle:
            order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        else:
            order = torch.arange(self.n)
        for step in range(self.steps_per_epoch):
            block = order[step * self.global_batch:(step + 1) * self.global_batch]
            for a in range(self.accum_steps):
                yield block[a * self.world + self.rank::self.chunks].tolist()

    def __len__(self) -> int:
        return self.steps_per_epoch * self.accum_steps


class ShardSampler(torch.utils.data.Sampler):
    """Indices ``rank, rank + world, ...`` of a dataset in order: disjoint shards covering every index exactly once
    (``DistributedSampler`` pads the last round with duplicates when ``world`` does not divide the set)."""

    def __init__(self, dataset_len: int, rank: int = 0, world_size: int = 1):
        self.indices = range(rank, dataset_len, world_size)

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


@torch.no_grad()
def evaluate_linear_probe(head: nn.Module, loader: Iterable,
                          feature_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
                          device: str | torch.device = "cpu", autocast_fp16: bool = False) -> dict:
    """Top-1/top-5 accuracy (fractions) and the counts, summed over ranks.

    ``autocast_fp16`` mimics the original, whose evaluation always ran under CUDA fp16 autocast.
    """
    device = torch.device(device)
    head = head.to(device).eval()
    counts = torch.zeros(3, dtype=torch.float64, device=device)  # top1, top5, total
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        with torch.autocast(device.type, dtype=torch.float16, enabled=autocast_fp16 and device.type == "cuda"):
            if feature_fn is not None:
                x = feature_fn(x)
            logits = head(x.float())
        k = min(5, logits.shape[1])
        top = logits.float().topk(k, dim=1).indices
        hit = top.eq(y[:, None])
        counts += torch.tensor([hit[:, :1].any(1).sum().item(), hit.any(1).sum().item(), len(y)],
                               dtype=torch.float64, device=device)
    if _dist_on():
        dist.all_reduce(counts)
    top1, top5, total = counts.tolist()
    if total == 0:
        raise ValueError("evaluate_linear_probe: the loader yielded no samples")
    return {"top1": top1 / total, "top5": top5 / total, "total": int(total)}


class TensorBatches:
    """In-memory (features, labels) batches without per-sample collation; ``len`` and ``batch_size`` like a
    DataLoader. Shuffles each pass with its own generator when ``shuffle``; ``drop_last`` as the original's train
    loader."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, shuffle: bool = False,
                 drop_last: bool = False, seed: int = 0):
        if len(x) != len(y):
            raise ValueError(f"{len(x)} feature rows but {len(y)} labels")
        self.x, self.y, self.batch_size = x, y, batch_size
        self.shuffle, self.drop_last = shuffle, drop_last
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        n = len(self.x)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self):
        order = torch.randperm(len(self.x), generator=self.generator) if self.shuffle else torch.arange(len(self.x))
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            yield self.x[idx], self.y[idx]


def fit_on_tensors(train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor, val_y: torch.Tensor,
                   num_classes: int, cfg: ProbeConfig | None = None, batch_size: int = 256,
                   device: str | torch.device = "cpu", seed: int = 0, log=None) -> dict:
    """Convenience: the full recipe on pre-extracted features (shuffled, drop_last training batches)."""
    cfg = cfg or ProbeConfig()
    torch.manual_seed(seed)
    train = TensorBatches(train_x, train_y, batch_size, shuffle=True, drop_last=True, seed=seed)
    val = TensorBatches(val_x, val_y, batch_size)
    head = LinearProbeHead(train_x.shape[1], num_classes)
    history = train_linear_probe(head, train, cfg, device=device, log=log)
    result = evaluate_linear_probe(head, val, device=device)
    result.update({"history": history, "config": asdict(cfg), "head": head})
    return result


# ---------------------------------------------------------------------------------------------------------------
# Driver shared by tokenizer/lin_probe.py and autoregressive/lin_probe.py

class EpochAugmentedFolder(ImageFolderDataset):
    """Training images whose random crop and flip draw from a stream seeded by ``(seed, epoch, index)``.

    Reproducible from the seed, different for every image and every epoch, and the same whatever the number of
    DataLoader workers (a generator captured in the transform would restart identically in every worker and epoch).
    Call :meth:`set_epoch` before each epoch's iterator is created.
    """

    def __init__(self, root, image_size: int, seed: int):
        super().__init__(root, image_size)
        self.seed, self.epoch = int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def to_tensor(self, img, index: int) -> torch.Tensor:
        stream = random.Random(int(np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(1)[0]))
        return train_transform(img, self.image_size, stream)


def add_probe_args(p) -> None:
    """The command-line flags both probe drivers share (the original's names and defaults)."""
    p.add_argument("--data-path", "--data-root", dest="data_path", required=True,
                   help="folder with ILSVRC2012_img_train/ and ILSVRC2012_img_val/, or use --train-path/--val-path")
    p.add_argument("--train-path", default=None, help="training ImageFolder (default: DATA/ILSVRC2012_img_train)")
    p.add_argument("--val-path", default=None, help="validation ImageFolder (default: DATA/ILSVRC2012_img_val)")
    p.add_argument("--save-path", default="results/lin_probe", help="parent folder of the experiment")
    p.add_argument("--sub-exp-dir", default="probe", help="experiment folder name")
    p.add_argument("--batch-size", type=int, default=512,
                   help="images per process and forward pass: the batch each BatchNorm normalises (the original's "
                        "batch per GPU)")
    p.add_argument("--global-batch-size", type=int, default=None,
                   help="images per optimiser step over all processes (default: --batch-size x processes, the "
                        "original's); larger values accumulate gradients over micro-batches of --batch-size. The "
                        "published probes: 8192 (128 x 64 GPUs)")
    p.add_argument("--image-size", type=int, default=None, help="must equal the model's image size (default: it)")
    p.add_argument("--epochs", type=int, default=90, help="total epochs (10 warm-up + cosine)")
    p.add_argument("--warmup-epochs", type=int, default=10, help="linear warm-up epochs")
    p.add_argument("--blr", type=float, default=0.1, help="base lr; lr = blr * global batch / 256")
    p.add_argument("--lr", type=float, default=None, help="absolute lr (overrides --blr)")
    p.add_argument("--min-lr", type=float, default=0.0, help="lr at the end of the cosine decay")
    p.add_argument("--weight-decay", type=float, default=0.0, help="LARS weight decay")
    p.add_argument("--ckpt-epoch", type=int, default=10,
                   help="checkpoint at epochs N, 2N, ... (not 0) and at the last epoch, as the original")
    p.add_argument("--num-classes", type=int, default=1000, help="classes of the dataset")
    p.add_argument("--num-workers", type=int, default=4, help="DataLoader workers per process")
    p.add_argument("--mixed-precision", "--precision", dest="mixed_precision", choices=list(PRECISIONS), default="none",
                   help="autocast dtype of the feature extractor")
    p.add_argument("--eval", action="store_true", help="only evaluate the last checkpoint (or print the result)")
    p.add_argument("--lin-probe-ckpt", default=None, help="with --eval: the probe checkpoint to evaluate")
    p.add_argument("--dist-eval", action="store_true",
                   help="accepted; evaluation is always split over the processes, each image counted exactly once")
    p.add_argument("--no-tf32", action="store_true", help="keep TF32 off on CUDA (the original turns it on)")
    p.add_argument("--global-seed", type=int, default=0, help="seed of the data order and augmentation")
    p.add_argument("--device", default="auto", help="auto (CUDA, else Apple MPS, else CPU), cpu, cuda, cuda:N")


def run_probe(args, feature_fn: Callable[[torch.Tensor], torch.Tensor], dim: int, image_size: int, tag: str,
              extra_settings: dict | None = None) -> dict:
    """Train (or evaluate) a linear probe on ``feature_fn`` features of an ImageFolder dataset; returns metrics.

    Outputs in ``<save-path>/<sub-exp-dir>/``: ``checkpoints/{epoch:04d}.pt`` ({model, optimizer, steps, epoch,
    args}), ``lin_probe_acc.txt`` (the original's line) and ``metrics.json``. A finished run is not retrained.
    """
    from utils.checkpoint import load_checkpoint_file, save_atomic
    from utils.distributed import barrier, init_distributed

    d = init_distributed(args.device)
    args.device = str(d.device)  # metrics.json records the device used, not "auto"
    configure_tf32(d.device, not args.no_tf32)
    if args.image_size is not None and args.image_size != image_size:
        raise ValueError(f"--image-size {args.image_size} does not match the model's image size {image_size}")
    exp = Path(args.save_path) / args.sub_exp_dir
    ckpt_dir = exp / "checkpoints"
    train_root = Path(args.train_path or Path(args.data_path) / "ILSVRC2012_img_train")
    val_root = Path(args.val_path or Path(args.data_path) / "ILSVRC2012_img_val")
    cfg = ProbeConfig(epochs=args.epochs, warmup_epochs=args.warmup_epochs, blr=args.blr, min_lr=args.min_lr,
                      weight_decay=args.weight_decay, abs_lr=args.lr)
    dtype = autocast_dtype(args.mixed_precision)

    def features(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(d.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            return feature_fn(x).float()

    global_batch = args.global_batch_size or args.batch_size * d.world_size
    if global_batch % (args.batch_size * d.world_size):
        raise ValueError(f"--global-batch-size {global_batch} must be a multiple of --batch-size {args.batch_size} x "
                         f"{d.world_size} process(es)")
    accum_steps = global_batch // (args.batch_size * d.world_size)

    def collate(batch):
        x, y, _, _ = collate_skip_bad(batch)
        return x, y

    def train_loader_of(root: Path):
        ds = EpochAugmentedFolder(root, image_size, args.global_seed)
        sampler = ProbeBatchSampler(len(ds), args.batch_size, global_batch, d.rank, d.world_size, args.global_seed)
        return torch.utils.data.DataLoader(ds, batch_sampler=sampler, num_workers=args.num_workers,
                                           collate_fn=collate), sampler

    def val_loader_of(root: Path):
        ds = ImageFolderDataset(root, image_size)
        return torch.utils.data.DataLoader(ds, batch_size=args.batch_size, num_workers=args.num_workers,
                                           sampler=ShardSampler(len(ds), d.rank, d.world_size), collate_fn=collate)

    head = LinearProbeHead(dim, args.num_classes)
    last = ckpt_dir / f"{cfg.epochs - 1:04d}.pt"
    existing = [Path(args.lin_probe_ckpt)] if args.eval and args.lin_probe_ckpt else sorted(ckpt_dir.glob("*.pt"))
    start_epoch, opt = 0, None
    if existing:
        state = load_checkpoint_file(existing[-1])
        head.load_state_dict(state["model"])
        start_epoch = int(state["epoch"]) + 1
        if start_epoch < cfg.epochs and not args.eval:
            opt = LARS(head.parameters(), lr=0.0, weight_decay=cfg.weight_decay, momentum=cfg.momentum,
                       trust_coefficient=cfg.trust_coefficient)
            opt.load_state_dict(state["optimizer"])
    if not args.eval and not last.exists():
        train_loader, sampler = train_loader_of(train_root)
        if sampler.steps_per_epoch == 0:
            raise ValueError(f"{train_root} has {sampler.n} training images, fewer than one global batch "
                             f"({global_batch}): lower --global-batch-size / --batch-size")
        if d.is_main:
            print(f"[lin_probe] global batch {global_batch} = {args.batch_size} per BatchNorm x {d.world_size} "
                  f"process(es) x {accum_steps} accumulation step(s); {sampler.steps_per_epoch} steps per epoch; "
                  f"lr {cfg.lr(global_batch):g}")

        def save(epoch, model, optimizer, steps):
            if d.is_main and ((epoch % args.ckpt_epoch == 0 and epoch > 0) or epoch == cfg.epochs - 1):
                save_atomic({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "steps": steps,
                             "epoch": epoch, "args": vars(args)}, ckpt_dir / f"{epoch:04d}.pt")
        def set_epoch(epoch: int) -> None:
            train_loader.dataset.set_epoch(epoch)
            sampler.set_epoch(epoch)
        train_linear_probe(head, train_loader, cfg, feature_fn=features, device=d.device,
                           batch_per_gpu=args.batch_size, accum_steps=accum_steps, start_epoch=start_epoch,
                           optimizer=opt, on_epoch_end=save, set_epoch=set_epoch,
                           log=print if d.is_main else None, progress=d.is_main)
        barrier()
    val_loader = val_loader_of(val_root)
    result = evaluate_linear_probe(head, val_loader, feature_fn=features, device=d.device)
    result.update({"feature_dim": dim, "epochs": cfg.epochs, "world_size": d.world_size, "batch_size": args.batch_size,
                   "global_batch_size": global_batch, "accum_steps": accum_steps, "lr": cfg.lr(global_batch),
                   "tf32": not args.no_tf32 and d.device.type == "cuda", "seed": args.global_seed,
                   **(extra_settings or {})})
    if d.is_main:
        exp.mkdir(parents=True, exist_ok=True)
        with open(exp / "lin_probe_acc.txt", "a") as fh:
            fh.write(f"{tag}: Accuracy of the network on the {result['total']} test images: {result['top1']:.4f}\n")
        (exp / "metrics.json").write_text(json.dumps(result, indent=2, default=str))
        print(f"[lin_probe] {tag}: top-1 {result['top1']:.4f}, top-5 {result['top5']:.4f} "
              f"on {result['total']} images; results in {exp}")
    return result
