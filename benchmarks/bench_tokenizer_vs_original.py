"""This project's tokenizer against the ORIGINAL GigaTok code: same YAML and weights, outputs checked, interleaved.

    python benchmarks/bench_tokenizer_vs_original.py --original /tmp/GigaTok \\
        --config configs/vq/VQ_SS256.yaml configs/vq/VQ_BL256.yaml --batch 2 4 8

``--original`` is a checkout of https://github.com/SilentView/GigaTok (read only; its imports need ``einops``,
``timm`` and ``torchvision``). Both models are built from the same YAML; the original is built on the meta device and
then given this project's randomly initialised tensors (the state-dict keys are the same), so the two share one copy
of the weights. Each step is images -> codes -> images (``encode`` then ``decode_code``) in fp32 without gradients.

Outputs are checked before timing: code indices must agree except at near ties of the argmin, and decoding the
original's codes must give the same images within ``--rtol`` (max abs difference / max abs value; float rounding
through ~80 layers gives 1e-5 to 1e-4). Timing alternates
the two models (the order flips every repetition) so that other load on the machine hits both alike; the table gives
the median and best seconds per batch, the speed-up (original / ours, of the medians and of the bests) and the
fraction of the measured GEMM rate each one reaches at its median (FLOPs counted on this project's model with
torch.utils.flop_counter; both do the same maths). The GEMM rate is re-measured before every batch size and the
highest value seen is used, so that a burst of foreign load during one measurement does not lower the ceiling.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import io
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks.bench_tokenizer import count_flops, measure_gemm_flops  # noqa: E402
from tokenizer import build_tokenizer  # noqa: E402

# top-level package names that both repositories use: imported for the original, then put back
SHARED_PACKAGES = ("tokenizer", "utils", "autoregressive", "dataset", "evaluations")
CL_CHOICES = {"auto": None, "on": True, "off": False}


def _own_modules() -> dict[str, Any]:
    return {k: sys.modules.pop(k) for k in list(sys.modules) if k.split(".")[0] in SHARED_PACKAGES}


def import_original(path: Path) -> Callable[[str], torch.nn.Module]:
    """The original's ``load_model_from_config``, imported from its checkout without shadowing this project's
    same-named packages (``tokenizer``, ``utils``): ours are set aside while it imports and restored afterwards."""
    if not (path / "tokenizer" / "tokenizer_image" / "vq" / "vq_vit_model.py").exists():
        sys.exit(f"--original {path}: not a checkout of SilentView/GigaTok (no tokenizer/tokenizer_image/vq/)")
    ours, old_path = _own_modules(), list(sys.path)
    sys.path[:] = [str(path)] + [p for p in old_path if Path(p or ".").resolve() != REPO]
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = importlib.import_module("utils.model_init")
    except ModuleNotFoundError as err:
        sys.exit(f"importing the original failed: {err}. It needs einops, timm and torchvision "
                 "(e.g. pip install einops).")
    finally:
        _own_modules()  # drop the original's entries
        sys.modules.update(ours)
        sys.path[:] = old_path

    def build(config: str) -> torch.nn.Module:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():  # it prints its arguments
            warnings.simplefilter("ignore")
            return module.load_model_from_config(config)

    return build


def build_pair(config: str, build_original: Callable[[str], torch.nn.Module], seed: int,
               channels_last: bool | None) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(original, ours) in eval mode sharing this project's randomly initialised weights."""
    torch.manual_seed(seed)
    ours = build_tokenizer(config).eval()
    ours.encoder.channels_last = ours.decoder.channels_last = channels_last
    with torch.device("meta"):
        original = build_original(config)
    state = ours.state_dict()
    if list(original.state_dict()) != list(state):
        raise SystemExit(f"{config}: the original's state-dict keys differ from ours")
    original.load_state_dict(state, strict=True, assign=True)
    return original.eval(), ours


def encode_decode(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """images -> (codes [B*N], images)."""
    quant, _, info = model.encode(x)
    codes = info[2]
    return codes, model.decode_code(codes, tuple(quant.shape))


def check_outputs(original: torch.nn.Module, ours: torch.nn.Module, x: torch.Tensor, rtol: float) -> str:
    """One line on how far our codes and images are from the original's; exits if they disagree."""
    codes_o, images_o = encode_decode(original, x)
    codes_u = ours.encode(x)[2][2]
    images_u = ours.decode_code(codes_o, ours.latent_shape(x.shape[0]))  # same codes: a near-tie flip cannot matter
    flipped = (codes_o != codes_u).float().mean().item()
    rel = ((images_u - images_o).abs().max() / images_o.abs().max()).item()
    line = f"codes differ at {100 * flipped:.2f}% of positions, images max rel diff {rel:.1e}"
    if rel > rtol or flipped > 0.01:
        raise SystemExit(f"outputs disagree with the original: {line}")
    return line


def time_interleaved(steps: dict[str, Callable[[], Any]], warmup: int, reps: int) -> dict[str, list[float]]:
    """Seconds per call of each step, alternating the steps (order reversed every repetition)."""
    for _ in range(warmup):
        for step in steps.values():
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    names = list(steps)
    for r in range(reps):
        for name in names if r % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            steps[name]()
            times[name].append(time.perf_counter() - start)
    return times


def bench_config(config: str, build_original: Callable[[str], torch.nn.Module], args: argparse.Namespace,
                 gemm: list[float]) -> list[dict]:
    """Check and time one YAML at every batch size; prints a table and returns its rows. ``gemm``: [highest GEMM
    FLOP/s measured so far], updated here."""
    original, ours = build_pair(config, build_original, args.seed, CL_CHOICES[args.channels_last])
    size = ours.image_size
    gen = torch.Generator().manual_seed(args.seed)
    x1 = torch.rand(1, 3, size, size, generator=gen) * 2 - 1
    flops_per_image = count_flops(functools.partial(encode_decode, ours, x1))
    print(f"\n{config}: {flops_per_image / 1e9:.0f} GFLOP per image (encode + decode)")
    print(f"{'batch':>5} {'original s':>13} {'ours s':>12} {'speed-up':>14} {'orig %GEMM':>10} {'ours %GEMM':>10}"
          f"   (median of {args.reps} [best])")
    rows = []
    for batch in args.batch:
        x = torch.rand(batch, 3, size, size, generator=gen) * 2 - 1
        gemm[0] = max(gemm[0], measure_gemm_flops(torch.device("cpu"), torch.float32))
        check = check_outputs(original, ours, x, args.rtol)
        times = time_interleaved({"original": functools.partial(encode_decode, original, x),
                                  "ours": functools.partial(encode_decode, ours, x)}, args.warmup, args.reps)
        med = {k: statistics.median(v) for k, v in times.items()}
        best = {k: min(v) for k, v in times.items()}
        pct = {k: 100 * flops_per_image * batch / med[k] / gemm[0] for k in med}
        speedup = f"{med['original'] / med['ours']:.2f}x [{best['original'] / best['ours']:.2f}x]"
        print(f"{batch:>5} {med['original']:>6.2f} [{best['original']:5.2f}] {med['ours']:>5.2f} [{best['ours']:5.2f}] "
              f"{speedup:>14} {pct['original']:>9.0f}% {pct['ours']:>9.0f}%   {check}",
              flush=True)
        rows.append({"config": config, "batch": batch, "original_s": med["original"], "ours_s": med["ours"],
                     "original_best_s": best["original"], "ours_best_s": best["ours"],
                     "speedup": med["original"] / med["ours"], "gemm_flops": gemm[0], "times": times})
    return rows


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--original", type=Path, default=None,
                   help="path of a checkout of SilentView/GigaTok (required: the original code to compare against)")
    p.add_argument("--config", nargs="+", default=["configs/vq/VQ_SS256.yaml", "configs/vq/VQ_BL256.yaml"],
                   help="tokenizer YAMLs, used for both implementations")
    p.add_argument("--batch", type=int, nargs="+", default=[2, 4, 8], help="batch sizes (images per step)")
    p.add_argument("--reps", type=int, default=3, help="timed steps per implementation and batch size")
    p.add_argument("--warmup", type=int, default=0,
                   help="extra untimed steps per implementation before timing (the output check already runs both)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights and images")
    p.add_argument("--channels-last", choices=list(CL_CHOICES), default="auto",
                   help="this project's CNN activation layout: auto (channels-last on CPU, the default), on, off")
    p.add_argument("--rtol", type=float, default=5e-4,
                   help="largest accepted max-abs image difference relative to the original's max abs value")
    return p


def main(argv: list[str] | None = None) -> list[dict]:
    args = build_parser().parse_args(argv)
    if args.original is None:
        sys.exit("this benchmark needs the original code: pass --original PATH, a checkout of "
                 "https://github.com/SilentView/GigaTok (git clone https://github.com/SilentView/GigaTok PATH)")
    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    build_original = import_original(args.original.resolve())
    gemm = [measure_gemm_flops(torch.device("cpu"), torch.float32)]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32, GEMM rate measured now "
          f"{gemm[0] / 1e9:.0f} GFLOP/s (re-measured per batch size); ours: channels-last {args.channels_last}")
    rows = []
    for config in args.config:
        rows += bench_config(config, build_original, args, gemm)
    print(f"\nhighest GEMM rate measured: {gemm[0] / 1e9:.0f} GFLOP/s (the %GEMM columns use it)")
    return rows


if __name__ == "__main__":
    main()
