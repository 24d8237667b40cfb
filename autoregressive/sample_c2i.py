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
``--help`` lists the everyday flags; its last paragraph the advanced ones.

Image ``i``'s class and random numbers come from generators seeded by ``(global seed, i)``, so the images do not
depend on the number of processes or the batch size. ``sample_settings.json`` records everything needed to
reproduce a folder (settings, world size, the inputs' identity: size, mtime and a partial sha256 of each checkpoint,
see ``autoregressive/sample_inputs.py``).

The jobs: ``sample_grid.py`` (visualize), ``sample_fid.py`` (fid), ``sample_search.py`` (--search), over
``sample_inputs.py`` (inputs resolved and checked once, the loaded models, the run key and settings).

A checkpoint that describes its model (a training checkpoint's ``gpt_config``, a tokenizer training checkpoint's
``config``, a ``save_pretrained`` folder) needs no model flags: ``--gpt-ckpt ... --vq-ckpt ...`` suffice. The model
flags (``--gpt-model``, ``--num-classes``, ``--cls-token-num``, ``--qk-norm``, ``--gpt-2d``, ``--tok-config``) stay
as optional checks: one that contradicts the checkpoint is an error naming both values. Released files store no
config: for them the flags and their defaults apply as before.
"""
from __future__ import annotations

import argparse

import torch

from autoregressive import cfg_search
from autoregressive.engine import add_engine_args, resolve_engine
from autoregressive.sample_fid import sample_fid
from autoregressive.sample_grid import visualize
from autoregressive.sample_inputs import Sampler, parse_class_ids, settle_models
from autoregressive.sample_search import search
from utils.checkpoint import resolve_checkpoint
from utils.compat import add_inert_flags
from utils.distributed import barrier, finish, init_distributed
from utils.training import PRECISIONS, configure_tf32


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown; the description and the epilog keep their own line breaks (one advanced flag per line)."""


def parse_args(argv=None) -> argparse.Namespace:
    summary = __doc__.split("\n\nTF32")[0]  # what the modes write; the rest is in the docstring and the docs
    p = argparse.ArgumentParser(description=summary, formatter_class=_HelpFormatter)
    p.add_argument("--mode", choices=["visualize", "fid"], default="visualize", help="class grids or gFID samples")
    g = p.add_argument_group("models")
    g.add_argument("--gpt-model", default=None,
                   help="GPT preset (GPT-B, GPT-L, GPT-XL, GPT-XXL, ...; default: the checkpoint's, else GPT-B); "
                        "like --num-classes, --qk-norm, --gpt-2d, --cls-token-num, --image-size (hidden) a check "
                        "for a checkpoint that describes its model")
    g.add_argument("--gpt-ckpt", required=True, help="GPT weights: local file, released name or hf://OWNER/REPO/FILE")
    add_inert_flags(p, "--gpt-type", "--quant-way", "--from-fsdp", "--eval-python-path")
    # Checks of what a described checkpoint already records (a given value must agree with it; for released files
    # and bare state dicts they set the model): hidden from --help, listed in Detailed_instructions.md. store_true
    # with default None tells "not given" (None) from "given" (True).
    hidden = argparse.SUPPRESS
    p.add_argument("--cls-token-num", type=int, default=None, help=hidden)
    p.add_argument("--qk-norm", action="store_true", default=None, help=hidden)
    p.add_argument("--gpt-2d", action="store_true", default=None, help=hidden)
    p.add_argument("--num-classes", type=int, default=None, help=hidden)
    p.add_argument("--image-size", type=int, default=None, help=hidden)
    g.add_argument("--vq-ckpt", required=True, help="tokenizer weights")
    g.add_argument("--tok-config", "--model-config", dest="tok_config", default=None,
                   help="tokenizer YAML (default: the tokenizer checkpoint's stored config, the released model's "
                        "YAML, or the one the GPT checkpoint records)")
    g.add_argument("--precision", choices=list(PRECISIONS), default="bf16", help="GPT weight/cache dtype")
    add_engine_args(p, g)
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
    g.add_argument("--sample-dir", default="samples", help="parent folder of the outputs (named from the settings)")
    g.add_argument("--out", default=None, help="the result folder itself instead of a name under --sample-dir (fid "
                   "--search: one folder per scale inside it); reused only for the same inputs")
    g.add_argument("--per-proc-batch-size", type=int, default=32, help="images per batch and process")
    g.add_argument("--class-idx", default="207,360,387,974,88,979,417,279", help="visualize: comma-separated ids")
    g.add_argument("--class-names", default=None, help="text file with one class name per line (default: "
                   "ImageNet names for 1000 classes, else class<id>)")
    g.add_argument("--qual-num", type=int, default=100, help="visualize: total images over all classes")
    g.add_argument("--num-fid-samples", type=int, default=50000, help="fid: number of images")
    g.add_argument("--gt-npz-path", default=None, help="fid: ADM reference batch; evaluates the samples")
    g.add_argument("--search", action="store_true",
                   help="fid: the original's CFG-scale search (step 0.25 to a local FID minimum; schedules step, "
                        "constant, rectangular); ignores --cfg-scale and starts from the original's per-model table")
    g.add_argument("--device", default="auto", help="auto (CUDA, else Apple MPS, else CPU), cpu, cuda, cuda:N")
    # Seldom-changed settings stay off the --help screen (which lists the everyday ones) and are listed in its
    # epilog, one line each.
    advanced = [
        ("--no-tf32", dict(action="store_true"), "keep TF32 off on CUDA (the original's samplers turn it on)"),
        ("--image-size-eval", dict(type=int, default=None), "resize samples (bicubic) to this size before saving"),
        ("--fid-method", dict(choices=("sqrtm", "eigh"), default="sqrtm"),
         "fid: the covariance-product root by scipy sqrtm (default, as ADM) or eigh (~3x faster on CPU, same value "
         "up to round-off)"),
        ("--cfg-scale-start", dict(type=float, default=None),
         "fid --search: start scale instead of the original's per-model table"),
        ("--clear-cache", dict(action="store_true"), "fid: delete the PNGs and the npz after the evaluation"),
    ]
    for flag, kwargs, _ in advanced:
        p.add_argument(flag, help=argparse.SUPPRESS, **kwargs)
    p.epilog = "advanced:\n" + "\n".join(f"  {flag}  {text}" for flag, _, text in advanced)
    args = p.parse_args(argv)
    resolve_engine(args)  # the old decode flags -> the engine (a contradiction is a ValueError)
    from autoregressive.models.generate import check_sampling_args
    try:
        check_sampling_args(args.cfg_scale, args.temperature, args.top_k, args.top_p)
    except ValueError as exc:
        p.error(str(exc).replace("cfg_scale", "--cfg-scale").replace("temperature", "--temperature", 1)
                .replace("top_k", "--top-k", 1).replace("top_p", "--top-p", 1))
    return args


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


