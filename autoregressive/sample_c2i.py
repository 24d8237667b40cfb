"""Class-conditional sampling with a GPT and a GigaTok tokenizer: class grids, or many images for gFID.

Two modes share one code path (``--mode``):

* ``visualize`` (scripts/sample_c2i_visualization.sh): ``--qual-num`` images spread over ``--class-idx``; one
  PNG per image under ``class_<id>_<name>/``, a grid per class and ``multi_class_grid.png`` with class names.
* ``fid`` (scripts/sample_c2i_search_cfg.sh): ``--num-fid-samples`` images with uniformly drawn class ids, PNGs,
  ``<folder>.npz`` (``arr_0`` uint8 NHWC, ``labels``, the token ``codes``), and with ``--gt-npz-path`` the ADM metrics
  (``<folder>.txt`` / ``.metrics.json``) and a row in ``search_results/<name>.csv``; ``--search`` walks the CFG
  scale by 0.25 to a local FID minimum as the original does, from its per-model start table and continuing from
  every row the CSV already holds (``autoregressive/cfg_search.py``); ``rectangular`` searches its window grid.

TF32 matmuls are on for CUDA, as the original's samplers (``--no-tf32`` turns them off); the settings JSON records it.

Image ``i``'s class and random numbers come from generators seeded by ``(global seed, i)``, so the images do not
depend on the number of processes or the batch size. ``sample_settings.json`` records everything needed to
reproduce a folder (settings, world size, checkpoints and their sha256).

A checkpoint that describes its model (a training checkpoint's ``gpt_config``, a tokenizer training checkpoint's
``config``, a ``save_pretrained`` folder) needs no model flags: ``--gpt-ckpt ... --vq-ckpt ...`` suffice. The model
flags (``--gpt-model``, ``--num-classes``, ``--cls-token-num``, ``--qk-norm``, ``--gpt-2d``, ``--tok-config``) stay
as optional checks: one that contradicts the checkpoint is an error naming both values. Released files store no
config: for them the flags and their defaults apply as before.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from autoregressive import cfg_search, generate, load_gpt
from autoregressive.engine import add_engine_args, resolve_engine
from autoregressive.loading import gpt_build_config, settle_gpt_flags
from autoregressive.models.generate import SamplingConfig, sample_generators
from autoregressive.models.static_decode import StaticDecoder, packed_kernel
from tokenizer import load_tokenizer, settle_tokenizer_config, tokenizer_info
from utils.checkpoint import CheckpointError, resolve_checkpoint, sha256_file
from utils.compat import add_inert_flags
from utils.data import to_uint8
from utils.distributed import barrier, finish, init_distributed
from utils.images import save_grid
from utils.training import PRECISIONS, configure_tf32, storage_dtype


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--mode", choices=["visualize", "fid"], default="visualize", help="class grids or gFID samples")
    g = p.add_argument_group("models")
    g.add_argument("--gpt-model", default=None,
                   help="GPT preset (GPT-B, GPT-L, GPT-XL, GPT-XXL, ...; default: the checkpoint's, else GPT-B)")
    g.add_argument("--gpt-ckpt", required=True, help="GPT weights: local file, released name or hf://OWNER/REPO/FILE")
    add_inert_flags(p, "--gpt-type", "--quant-way", "--from-fsdp", "--eval-python-path")
    g.add_argument("--cls-token-num", type=int, default=None, help="class-condition tokens (default: the "
                   "checkpoint's, else 1)")
    # store_true with default None: "not given" (None) is told apart from "given" (True) to check the checkpoint
    g.add_argument("--qk-norm", action="store_true", default=None,
                   help="the GPT was trained with QK-norm (default: as the checkpoint records; released GPTs: off)")
    g.add_argument("--gpt-2d", action="store_true", default=None,
                   help="the GPT is the 2D-RoPE variant (default: as the checkpoint records; released GPTs: off)")
    g.add_argument("--num-classes", type=int, default=None,
                   help="classes the GPT was trained with (default: the checkpoint's, else 1000)")
    g.add_argument("--vq-ckpt", required=True, help="tokenizer weights")
    g.add_argument("--tok-config", "--model-config", dest="tok_config", default=None,
                   help="tokenizer YAML (default: the tokenizer checkpoint's stored config, the released model's "
                        "YAML, or the one the GPT checkpoint records)")
    g.add_argument("--precision", choices=list(PRECISIONS), default="bf16", help="GPT weight/cache dtype")
    add_engine_args(p, g)
    g.add_argument("--no-tf32", action="store_true", help="keep TF32 off on CUDA (the original's samplers turn it on)")
    g = p.add_argument_group("sampling")
    g.add_argument("--cfg-scale", type=float, default=2.0, help="classifier-free guidance scale (<= 1: off)")
    g.add_argument("--cfg-schedule", default="constant", help="constant, step, linear, linear_re, triangular, "
                   "rectangular, cosine, sigmoid")
    g.add_argument("--step-start-ratio", type=float, default=0.18, help="window_start of the step schedule")
    g.add_argument("--cfg-interval", type=float, default=-1, help="decode steps after which CFG stops (-1: never)")
    g.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens (0: all)")
    g.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling threshold")
    g.add_argument("--temperature", type=float, default=1.0, help="softmax temperature")
    g.add_argument("--global-seed", type=int, default=0, help="seed of every image's generator")
    g = p.add_argument_group("output")
    g.add_argument("--sample-dir", default="samples", help="parent folder of the outputs")
    g.add_argument("--image-size", type=int, default=None, help="must equal the tokenizer's (default: it)")
    g.add_argument("--image-size-eval", type=int, default=None, help="resize samples (bicubic) before saving")
    g.add_argument("--per-proc-batch-size", type=int, default=32, help="images per batch and process")
    g.add_argument("--class-idx", default="207,360,387,974,88,979,417,279", help="visualize: comma-separated ids")
    g.add_argument("--class-names", default=None, help="text file with one class name per line (default: "
                   "ImageNet names for 1000 classes, else class<id>)")
    g.add_argument("--qual-num", type=int, default=100, help="visualize: total images over all classes")
    g.add_argument("--num-fid-samples", type=int, default=50000, help="fid: number of images")
    g.add_argument("--gt-npz-path", default=None, help="fid: ADM reference batch; evaluates the samples")
    g.add_argument("--fid-method", choices=("sqrtm", "eigh"), default="sqrtm",
                   help="fid: trace of the covariance-product root by scipy sqrtm (as ADM) or by symmetric "
                        "eigendecompositions (eigh: ~3x faster on CPU, same value up to round-off)")
    g.add_argument("--search", action="store_true",
                   help="fid: the original's CFG-scale search (step 0.25 to a local FID minimum; schedules step, "
                        "constant, rectangular); ignores --cfg-scale and starts from the original's per-model table")
    g.add_argument("--cfg-scale-start", type=float, default=None,
                   help="fid --search: start scale instead of the original's table (e.g. GPT-B step 2.5)")
    g.add_argument("--clear-cache", action="store_true", help="fid: delete PNGs and npz after evaluation")
    g.add_argument("--device", default="auto", help="auto (CUDA, else Apple MPS, else CPU), cpu, cuda, cuda:N")
    args = p.parse_args(argv)
    resolve_engine(args)  # the old decode flags -> the engine (a contradiction is a ValueError)
    from autoregressive.models.generate import check_sampling_args
    try:
        check_sampling_args(args.cfg_scale, args.temperature, args.top_k, args.top_p)
    except ValueError as exc:
        p.error(str(exc).replace("cfg_scale", "--cfg-scale").replace("temperature", "--temperature", 1)
                .replace("top_k", "--top-k", 1).replace("top_p", "--top-p", 1))
    return args


def class_names(args: argparse.Namespace) -> list[str]:
    if args.class_names:
        names = [line.strip() for line in Path(args.class_names).read_text().splitlines() if line.strip()]
        if len(names) != args.num_classes:
            raise ValueError(f"{args.class_names} lists {len(names)} names for {args.num_classes} classes")
        return names
    if args.num_classes == 1000:
        from torchvision.models import ResNet50_Weights
        return list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])
    return [f"class{i}" for i in range(args.num_classes)]


def parse_class_ids(text: str, num_classes: int) -> list[int]:
    try:
        ids = [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError as exc:
        raise ValueError(f"--class-idx must be comma-separated integers, got {text!r}") from exc
    bad = [i for i in ids if not 0 <= i < num_classes]
    if bad or not ids:
        raise ValueError(f"class ids {bad or text!r} are outside [0, {num_classes})")
    return ids


def fid_labels(seed: int, indices: list[int], num_classes: int) -> torch.Tensor:
    """Class of image ``i``: uniform, from its own generator (independent of process count and batching)."""
    gens = sample_generators(seed + 7919, indices)
    return torch.tensor([int(torch.randint(num_classes, (), generator=g)) for g in gens], dtype=torch.long)


def settle_models(args: argparse.Namespace) -> None:
    """Model flags from the checkpoints: each flag not given takes the checkpoint's value (else its old default), a
    given one must agree with the checkpoint (one ConfigError names the flag and both values); ``args.tok_config``
    becomes the tokenizer's config and ``args.gpt_config`` what ``load_gpt`` builds."""
    description = settle_gpt_flags(args, args.gpt_ckpt)
    args.tok_config = settle_tokenizer_config(args.vq_ckpt, args.tok_config, description)
    info = tokenizer_info(args.tok_config)
    args.gpt_config = gpt_build_config(args, description, info["codebook_size"], info["num_tokens"],
                                       f"the tokenizer {tokenizer_label(args)}")


def tokenizer_label(args: argparse.Namespace) -> str:
    """The tokenizer config's file, or the checkpoint that stores it, for messages and the CFG search table."""
    return str(args.tok_config) if isinstance(args.tok_config, (str, Path)) else f"stored in {args.vq_ckpt}"


class Sampler:
    """Loaded models plus the sampling settings; ``images(labels, indices)`` -> uint8 NHWC."""

    def __init__(self, args: argparse.Namespace, device: torch.device):
        self.args, self.device = args, device
        self.tok = load_tokenizer(args.tok_config, resolve_checkpoint(args.vq_ckpt), device=device)
        size = args.image_size or self.tok.image_size
        if size != self.tok.image_size:
            raise ValueError(f"--image-size {size} does not match the tokenizer's {self.tok.image_size}")
        try:
            self.gpt = load_gpt(args.gpt_config, resolve_checkpoint(args.gpt_ckpt), device=device,
                                dtype=storage_dtype(args.precision))
        except CheckpointError as exc:
            raise CheckpointError(f"{exc}\nThe GPT was built for the tokenizer {tokenizer_label(args)} (vocabulary "
                                  f"{self.tok.codebook_size}, {self.tok.num_tokens} tokens) and --num-classes "
                                  f"{args.num_classes}; a GPT trained for another tokenizer cannot be used.") from exc
        self.decoder = None
        if args.decode == "static":  # (resolve_engine refused static options with the eager loop)
            self.decoder = StaticDecoder(self.gpt, args.per_proc_batch_size, compile=decode_compile(args, device),
                                         attention=args.attention, cpu_prepack=args.cpu_prepack)

    @torch.no_grad()
    def images(self, labels: torch.Tensor, indices: list[int], cfg_scale: float,
               schedule_kwargs: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
        a = self.args
        kwargs = default_schedule_kwargs(a) if schedule_kwargs is None else schedule_kwargs
        config = sampling_config_of(a, cfg_scale, kwargs)
        labels = labels.to(self.device)
        gens = config.generators(indices)
        if self.decoder is None:
            codes = generate(self.gpt, labels, self.tok.num_tokens, config, generator=gens)
        else:
            codes = self.decoder.generate(labels, self.tok.num_tokens, config, generator=gens)
        pixels = self.tok.decode_code(codes, self.tok.latent_shape(len(indices))).float()
        if a.image_size_eval and a.image_size_eval != pixels.shape[-1]:
            pixels = torch.nn.functional.interpolate(pixels, size=a.image_size_eval, mode="bicubic")
        return to_uint8(pixels).cpu().numpy(), codes.cpu().numpy()


def sampling_config_of(args: argparse.Namespace, cfg_scale: float, schedule_kwargs: dict) -> SamplingConfig:
    """The flags' SamplingConfig at one guidance scale and set of schedule arguments (a search varies those)."""
    return SamplingConfig(cfg_scale=cfg_scale, cfg_schedule=args.cfg_schedule, cfg_schedule_kwargs=schedule_kwargs,
                          cfg_interval=args.cfg_interval, temperature=args.temperature, top_k=args.top_k,
                          top_p=args.top_p, seed=args.global_seed)


def decode_compile(args: argparse.Namespace, device: torch.device) -> str:
    """The StaticDecoder compile mode of these flags (``--compile`` picks torch.compile for the device)."""
    if args.compile:
        return "reduce-overhead" if device.type == "cuda" else "default"
    return args.decode_compile


def decode_inputs(args: argparse.Namespace) -> dict:
    """The decode settings that can change tokens (fused attention, inductor kernels): part of the run key only then,
    so eager and the bit-identical static paths share their results."""
    if args.decode == "eager":
        return {}
    compiled = args.compile or args.decode_compile in ("default", "reduce-overhead")
    if args.attention == "math" and not compiled and not args.cpu_prepack:
        return {}
    packed = ""
    if args.cpu_prepack:  # the kernel that will run (auto resolves per machine and batch), not the flag's value
        packed = "/cpu-prepack-" + packed_kernel(args.cpu_prepack, args.per_proc_batch_size,
                                                 storage_dtype(args.precision), compiled)
    return {"decode": f"{'compiled' if compiled else args.decode_compile}/{args.attention}{packed}"}


def default_schedule_kwargs(args: argparse.Namespace) -> dict:
    return {"window_start": args.step_start_ratio} if args.cfg_schedule == "step" else {}


def settings(args: argparse.Namespace, world_size: int, cfg_scale: float, schedule_kwargs: dict | None = None) -> dict:
    out = {k: v for k, v in vars(args).items()}
    out.pop("_run_inputs", None)
    out.update(cfg_scale=cfg_scale, world_size=world_size, tf32=not args.no_tf32, run_key=run_key(args),
               run_inputs=run_inputs(args),
               cfg_schedule_kwargs=default_schedule_kwargs(args) if schedule_kwargs is None else schedule_kwargs,
               gpt_ckpt_sha256=run_inputs(args)["gpt_ckpt_sha256"],
               vq_ckpt_sha256=run_inputs(args)["vq_ckpt_sha256"],
               created=time.strftime("%Y-%m-%d %H:%M:%S"))
    return out


def visualize(args, sampler: Sampler, dist) -> Path:
    ids = parse_class_ids(args.class_idx, args.num_classes)
    names = class_names(args)
    # first synonym, made safe as a file name ("T-shirt/top" -> "T-shirt_top")
    short = [re.sub(r"[^\w.+-]+", "_", names[i].split(",")[0].strip()).strip("_") or f"class{i}" for i in ids]
    folder = Path(args.sample_dir) / (f"{args.gpt_model}-topk-{args.top_k}-topp-{args.top_p}-temp-{args.temperature}"
                                      f"-cfg-{args.cfg_scale}-{args.cfg_schedule}-{run_key(args)}"
                                      f"-seed-{args.global_seed}")
    per_class = math.ceil(args.qual_num / len(ids))
    # job k = (class position c, sample n); image index k seeds its generator -> same picture for any world size
    jobs = [(c, n) for c in range(len(ids)) for n in range(per_class)]
    mine = jobs[dist.rank:: dist.world_size]
    drawn: dict[tuple[int, int], np.ndarray] = {}  # (class position, sample) -> uint8 HWC, kept for the grids
    for start in tqdm(range(0, len(mine), args.per_proc_batch_size), disable=not dist.is_main, desc="sample"):
        chunk = mine[start: start + args.per_proc_batch_size]
        labels = torch.tensor([ids[c] for c, _ in chunk])
        indices = [c * per_class + n for c, n in chunk]
        for img, (c, n) in zip(sampler.images(labels, indices, args.cfg_scale)[0], chunk, strict=True):
            out = folder / f"class_{ids[c]}_{short[c]}"
            out.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(out / f"{short[c]}_{n:06d}.png")
            drawn[(c, n)] = img
    if dist.world_size > 1:  # the grids need every process's images: gather them in memory on the main process
        parts: list = [None] * dist.world_size
        torch.distributed.all_gather_object(parts, drawn)
        drawn = {k: v for part in parts for k, v in part.items()}
    barrier()
    if dist.is_main:
        rows, captions = [], []
        for c, cid in enumerate(ids):
            imgs = np.stack([drawn[(c, n)] for n in range(per_class)])
            save_grid(imgs, folder / f"class_{cid}_grid.png", ncol=min(6, len(imgs)), title=f"{cid}: {names[cid]}")
            show = imgs[: min(6, len(imgs))]
            rows.append(show)
            captions += [f"{cid} {short[c]}"[:24]] + [""] * (len(show) - 1)
        ncol = max(len(r) for r in rows)
        padded = [np.concatenate([r, np.full((ncol - len(r), *r.shape[1:]), 255, np.uint8)]) for r in rows]
        flat_caps = []
        k = 0
        for r in rows:
            flat_caps += captions[k: k + len(r)] + [""] * (ncol - len(r))
            k += len(r)
        save_grid(np.concatenate(padded), folder / "multi_class_grid.png", ncol=ncol, captions=flat_caps)
        (folder / "sample_settings.json").write_text(json.dumps(settings(args, dist.world_size, args.cfg_scale),
                                                                indent=2, default=str))
        print(f"[sample] {len(jobs)} images of classes {ids} in {folder}; grid: {folder / 'multi_class_grid.png'}")
    return folder


def run_inputs(args) -> dict:
    """Everything besides the CFG scale and schedule that changes the samples or their metrics."""
    if getattr(args, "_run_inputs", None) is None:
        ref = args.gt_npz_path
        args._run_inputs = {
            "gpt_ckpt_sha256": sha256_file(resolve_checkpoint(args.gpt_ckpt)),
            "vq_ckpt_sha256": sha256_file(resolve_checkpoint(args.vq_ckpt)),
            "tok_config_sha256": config_sha256(args.tok_config), "gpt_model": args.gpt_model,
            "num_classes": args.num_classes, "num_fid_samples": args.num_fid_samples, "precision": args.precision,
            "top_k": args.top_k, "top_p": args.top_p, "temperature": args.temperature,
            "cfg_interval": args.cfg_interval, "image_size_eval": args.image_size_eval, "seed": args.global_seed,
            "qk_norm": args.qk_norm, "gpt_2d": args.gpt_2d,
            "reference_sha256": sha256_file(ref) if ref and Path(ref).is_file() else None, **decode_inputs(args)}
    return args._run_inputs


def config_sha256(config) -> str:
    """sha256 of a config file, or of a stored config's canonical JSON (a checkpoint that carries its config)."""
    import hashlib
    if isinstance(config, (str, Path)):
        return sha256_file(config)
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()


def run_key(args) -> str:
    """8 hex digits identifying :func:`run_inputs`: part of every result name, so results never collide."""
    import hashlib
    return hashlib.sha256(json.dumps(run_inputs(args), sort_keys=True).encode()).hexdigest()[:8]


def fid_folder(args, cfg_scale: float, schedule_kwargs: dict) -> Path:
    """The original's folder name plus the schedule arguments (the original leaves them out, so runs with other
    windows reuse each other's samples) and :func:`run_key` (another checkpoint, sample count, reference, precision
    ... writes beside, never over, an existing result)."""
    size = args.image_size_eval or args.image_size or "tok"
    windows = "".join(f"-{k}-{float(v):.2f}" for k, v in schedule_kwargs.items())
    return Path(args.sample_dir) / (f"{args.gpt_model}-size-{args.image_size or 'tok'}-size-{size}-topk-{args.top_k}"
                                    f"-topp-{args.top_p}-temperature-{args.temperature}-cfg-{cfg_scale}"
                                    f"-{args.cfg_schedule}{windows}-{run_key(args)}-seed-{args.global_seed}")


def read_metrics(txt: Path) -> dict | None:
    """The five metrics of a finished folder's ``<folder>.txt`` (the evaluator's lines), by their display names (the
    CSV's columns); None when the file is missing or incomplete."""
    from evaluations.c2i.evaluator import METRIC_LINES, parse_metric_lines
    if not txt.is_file():
        return None
    found = parse_metric_lines(txt.read_text())
    return {label: found[key] for label, key in METRIC_LINES} if all(k in found for _, k in METRIC_LINES) else None


def sample_fid(args, sampler: Sampler, dist, cfg_scale: float, schedule_kwargs: dict | None = None) -> dict | None:
    """Sample (or reuse) one folder at ``cfg_scale``; with a reference batch, evaluate it, write ``<folder>.txt`` and
    make sure the results CSV has its row; returns the metrics (None without a reference)."""
    kwargs = default_schedule_kwargs(args) if schedule_kwargs is None else schedule_kwargs
    folder = fid_folder(args, cfg_scale, kwargs)
    txt = folder.parent / f"{folder.name}.txt"
    done = read_metrics(txt)
    if done is not None:
        if dist.is_main:
            print(f"[sample] reusing {txt}: every recorded input is identical (run key {run_key(args)})")
            cfg_search.record(csv_path(args), args.cfg_schedule, cfg_search.annotation(kwargs), cfg_scale, done)
        barrier()
        return done
    n = args.num_fid_samples
    mine = list(range(dist.rank, n, dist.world_size))
    if dist.is_main:
        folder.mkdir(parents=True, exist_ok=True)
    barrier()
    start = time.time()
    for k in tqdm(range(0, len(mine), args.per_proc_batch_size), disable=not dist.is_main, desc=f"cfg {cfg_scale}"):
        idx = mine[k: k + args.per_proc_batch_size]
        imgs, codes = sampler.images(fid_labels(args.global_seed, idx, args.num_classes), idx, cfg_scale, kwargs)
        for img, code, i in zip(imgs, codes, idx, strict=True):
            Image.fromarray(img).save(folder / f"{i:06d}.png")
            np.save(folder / f"{i:06d}.codes.npy", code)
    barrier()
    metrics = None
    if dist.is_main:
        arr = np.stack([np.asarray(Image.open(folder / f"{i:06d}.png")) for i in range(n)])
        npz = folder.parent / f"{folder.name}.npz"
        codes = np.stack([np.load(folder / f"{i:06d}.codes.npy") for i in range(n)])
        np.savez(npz, arr_0=arr, labels=fid_labels(args.global_seed, list(range(n)), args.num_classes).numpy(),
                 codes=codes)
        info = settings(args, dist.world_size, cfg_scale, kwargs)
        info["seconds"] = time.time() - start
        (folder / "sample_settings.json").write_text(json.dumps(info, indent=2, default=str))
        print(f"[sample] {n} images in {folder}, npz {npz} ({info['seconds']:.0f} s)")
        if args.gt_npz_path:
            from evaluations.c2i.evaluator import evaluate_npz, format_lines
            # reference activations cached next to the reference npz (keyed by sha256); full results as JSON
            result = evaluate_npz(Path(args.gt_npz_path), npz, device=dist.device, cache_ref=True,
                                  fid_method=args.fid_method,
                                  out_json=folder.parent / f"{folder.name}.metrics.json")
            # the evaluator's own five lines (IS, FID, sFID, Precision, Recall), read back by read_metrics
            txt.write_text("".join(f"{line}\n" for line in format_lines(result)))
            metrics = read_metrics(txt)
            cfg_search.record(csv_path(args), args.cfg_schedule, cfg_search.annotation(kwargs), cfg_scale, metrics)
        if args.clear_cache:
            shutil.rmtree(folder)
            if args.gt_npz_path:
                npz.unlink()
    barrier()
    return metrics if dist.is_main else read_metrics(txt)


def csv_path(args) -> Path:
    """The original's results CSV (``<parent>/search_results/<name>.csv``), one per :func:`run_key`, so a search
    never takes another checkpoint's rows for its history."""
    sample_dir = Path(args.sample_dir)
    return sample_dir.parent / "search_results" / f"{sample_dir.name}-{run_key(args)}.csv"


def search(args, sampler: Sampler, dist) -> dict:
    """The original's search for this schedule (see autoregressive/cfg_search.py); returns the best setting."""
    if not args.gt_npz_path:
        raise ValueError("--search needs --gt-npz-path (the reference batch to compute FID against)")
    start = args.cfg_scale_start
    if start is None:
        start = cfg_search.empirical_cfg_start(args.gpt_model, args.cfg_schedule, tokenizer_label(args),
                                               args.gpt_ckpt)
    path, first_start = csv_path(args), start
    if args.cfg_schedule == "rectangular":
        windows = [{"window_start": ws, "window_end": we} for ws, we in cfg_search.rectangular_grid()]
    else:
        windows = [default_schedule_kwargs(args)]
    walks = []
    for kwargs in tqdm(windows, disable=not dist.is_main or len(windows) == 1, desc="window grid"):
        def evaluate(scale: float, kw: dict = kwargs) -> dict | None:
            metrics = sample_fid(args, sampler, dist, scale, kw)
            if dist.is_main:  # redrawn after every scale, so an interrupted search has its picture too
                plot_search(path)
            return metrics

        best, fid = cfg_search.walk(path, args.cfg_schedule, cfg_search.annotation(kwargs), start, evaluate,
                                    increase_first=args.cfg_schedule != "rectangular")
        walks.append({"cfg_schedule_kwargs": kwargs, "best_cfg_scale": best, "fid": fid})
        start = best  # the next window starts from this one's best (rectangular)
    overall = min(walks, key=lambda w: w["fid"])
    picture = plot_search(path) if dist.is_main else None
    if dist.is_main:
        print(f"[search] {args.cfg_schedule} {overall['cfg_schedule_kwargs']}: best cfg scale "
              f"{overall['best_cfg_scale']} with FID {overall['fid']:.4f} (results in {path})")
    return {**overall, "start": first_start, "walks": walks, "csv": str(path),
            "plot": None if picture is None else str(picture)}


def plot_search(path: Path) -> Path | None:
    """FID and IS against the scale (``<csv stem>.cfg_search.png`` beside the CSV); a plotting failure or a missing
    matplotlib is one printed line, never the end of a search."""
    from utils.plot_run import PLOT_EXTRA_HINT, plot_cfg_search
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print(f"[search] no cfg_search.png: matplotlib is not installed ({PLOT_EXTRA_HINT})")
        return None
    try:
        return plot_cfg_search(path)
    except Exception as exc:  # noqa: BLE001 - the search's results are in the CSV either way
        print(f"[search] WARNING: cfg_search.png not drawn ({type(exc).__name__}: {exc})")
        return None


@torch.no_grad()
def main(argv=None):
    args = parse_args(argv)
    if args.search and args.mode == "fid":  # an unsearchable schedule fails here (the preset does not matter)
        cfg_search.empirical_cfg_start(args.gpt_model or "GPT-B", args.cfg_schedule)
    dist = init_distributed(args.device)
    args.device = str(dist.device)  # sample_settings.json records the device used, not "auto"
    configure_tf32(dist.device, not args.no_tf32)
    if dist.is_main:  # download once; other ranks then read the Hub cache
        resolve_checkpoint(args.vq_ckpt), resolve_checkpoint(args.gpt_ckpt)
    barrier()
    settle_models(args)  # before anything reads a model flag
    if args.mode == "visualize":
        parse_class_ids(args.class_idx, args.num_classes)  # fail before loading models
    sampler = Sampler(args, dist.device)
    if args.mode == "visualize":
        result = visualize(args, sampler, dist)
    elif args.search:
        result = search(args, sampler, dist)
    else:
        result = sample_fid(args, sampler, dist, args.cfg_scale)
    finish()
    return result


if __name__ == "__main__":
    from utils.cli import run_cli
    run_cli(main, "sample_c2i")
