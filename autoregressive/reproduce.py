"""One command per published number: ``scripts/reproduce.sh ROW`` runs the original's recipe for a row of the
README's model table with the project's own drivers and writes ``results/reproduce/<row>.json``.

    bash scripts/reproduce.sh list                       # every row, its paper value and settings
    GPUS=8 bash scripts/reproduce.sh gfid/GPT-B_VQ_XLXXL  # [--search] [--dry-run]
    bash scripts/reproduce.sh rfid/VQ_SS256 --tiny results/quickstart   # the same chain on the quickstart's models
    bash scripts/reproduce.sh rfid/VQ_SS256 --tiny results/quickstart --tiny-tokenizer VQ_tiny32_2d_ft64  # a fine-tune

Rows: ``rfid/<tokenizer>`` (rFID, rsFID and LPIPS of the reconstructions of ImageNet val), ``gfid/<gpt>`` (50k samples,
step CFG schedule from 0.18, seed 0, against ADM's reference batch; the published GPT-B on XL-XXL setting is CFG 1.75
at fp32; rows whose CFG scale the original's docs do not give run the original's CFG search from its start table at
fp16, the training precision its searching scripts sample at; ``--search`` searches a row with a published scale too,
at that row's precision), ``probe/<gpt>`` (the GPT's linear probe: 90 epochs at the published global batch of 8192 =
128 per BatchNorm x 64 GPUs, reached on any number of processes by gradient accumulation, lr 0.1 x 8192 / 256 = 3.2,
then evaluation of the last checkpoint). The released weights come from the Hub.

Data: ``VAL_PATH`` (256-px val images, from ``scripts/val.sh --sample-dir results/reconstructions/img_data``; default
``results/reconstructions/img_data/val_imagenet``), ``GT_VAL_NPZ_PATH`` (its npz, the rFID reference),
``GT_NPZ_PATH`` (``VIRTUAL_imagenet256_labeled.npz``), ``IMGNET_ROOT`` (ImageNet with ``ILSVRC2012_img_{train,val}``,
for the probes). The result JSON holds the paper's and the measured value, their difference, every setting and
command, the software versions, the GPU type and count, and the sha256 of the checkpoints and the reference.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from utils.cli import HelpFormatter
from utils.released import GPTS, TOKENIZERS

REPO = Path(__file__).resolve().parents[1]
EXIT_MISSING = 2
PRECISION_NAMES = {"none": "fp32", "fp32": "fp32", "fp16": "fp16", "bf16": "bf16"}


@dataclass
class Row:
    name: str
    kind: str               # rfid | gfid | probe
    paper: dict
    tokenizer: str
    gpt: str | None = None
    settings: dict = field(default_factory=dict)


def rows() -> dict[str, Row]:
    out = {}
    for t in TOKENIZERS.values():
        out[f"rfid/{t.name}"] = Row(f"rfid/{t.name}", "rfid", {"rfid": t.rfid, "lpips": t.lpips}, t.name,
                                    settings={"image_size": 256, "precision": "none", "per_proc_batch_size": 32})
    for g in GPTS.values():
        out[f"gfid/{g.name}"] = Row(f"gfid/{g.name}", "gfid", {"gfid": g.gfid}, g.tokenizer, g.name, settings={
            "cfg_schedule": "step", "step_start_ratio": 0.18, "cfg_scale": g.cfg_scale,
            # the published scale was sampled at fp32 (the author's answer); the original's searching scripts
            # (train_c2i_and_eval*.sh) sample at the training PRECISION, fp16
            "precision": "none" if g.cfg_scale is not None else "fp16",
            "num_fid_samples": 50_000, "global_seed": 0, "per_proc_batch_size": 16})
    for g in GPTS.values():
        out[f"probe/{g.name}"] = Row(f"probe/{g.name}", "probe", {"acc": g.acc}, g.tokenizer, g.name, settings={
            # "we use 128*64 global batch size" (the original's probe scripts): 64 GPUs x 128
            "epochs": 90, "blr": 0.1, "batch_size": 128, "global_batch_size": 128 * 64, "ckpt_epoch": 5,
            "mixed_precision": "fp16"})
    return out


# ----- the inputs a row needs ----------------------------------------------------------------------------------------

@dataclass
class Inputs:
    tok_config: str
    vq_ckpt: str
    gpt_model: str | None
    gpt_ckpt: str | None
    val_path: str
    val_npz: str
    gt_npz: str
    imagenet: str
    tiny: bool = False
    num_classes: int = 1000
    image_size: int = 256


def released_inputs(row: Row) -> Inputs:
    tok = TOKENIZERS[row.tokenizer]
    gpt = GPTS[row.gpt] if row.gpt else None
    return Inputs(tok_config=tok.config, vq_ckpt=tok.file, gpt_model=gpt.preset if gpt else None,
                  gpt_ckpt=gpt.file if gpt else None,
                  val_path=os.environ.get("VAL_PATH", "results/reconstructions/img_data/val_imagenet"),
                  val_npz=os.environ.get("GT_VAL_NPZ_PATH", "results/reconstructions/img_data/val_imagenet.npz"),
                  gt_npz=os.environ.get("GT_NPZ_PATH", "VIRTUAL_imagenet256_labeled.npz"),
                  imagenet=os.environ.get("IMGNET_ROOT", "$IMGNET_ROOT"))


def _newest(folder: Path) -> str:
    found = sorted(folder.glob("[0-9]" * 7 + ".pt"))
    if not found:
        raise FileNotFoundError(f"no checkpoint in {folder} (run bash scripts/quickstart.sh first)")
    return str(found[-1])


QUICKSTART_TOKENIZER, QUICKSTART_GPT = "VQ_tiny32_2d", "GPT-tiny"  # the run names scripts/quickstart.sh gives


def _tiny_size_and_classes(tok_config: str, vq_ckpt: str, gpt_ckpt: str) -> tuple[int, int]:
    """The image size and class count the checkpoints describe (a run fine-tuned at 64 px, or on other classes, is
    read as what it is, not taken for the quickstart's 32 px and 10 classes); the YAML when a file describes none."""
    from tokenizer import tokenizer_info
    from utils.checkpoint import read_model_description
    tok = read_model_description(vq_ckpt)
    image_size = tokenizer_info(tok.config if tok.kind == "tokenizer" and not tok.partial else tok_config)[
        "image_size"]
    gpt = read_model_description(gpt_ckpt)
    num_classes = int((gpt.config or {}).get("num_classes", 10)) if gpt.kind == "gpt" else 10
    return image_size, num_classes


def tiny_inputs(quickstart: Path, tokenizer_run: str = QUICKSTART_TOKENIZER, gpt_run: str = QUICKSTART_GPT) -> Inputs:
    """The quickstart's tokenizer, GPT and data in place of the released models and ImageNet: the newest checkpoints
    of the runs ``tokenizer/<tokenizer_run>`` and ``gpt/<gpt_run>`` under ``quickstart`` (a fine-tune written beside
    them is picked by its run name). The held-out images' reference npz is ``eval/val.npz`` at the quickstart's 32 px,
    ``eval/val_<size>.npz`` at another size (made by :func:`make_tiny_reference`)."""
    tok_dir = quickstart / "tokenizer" / tokenizer_run
    tok_config = str(tok_dir / "config.yaml") if (tok_dir / "config.yaml").is_file() else \
        f"configs/vq/{QUICKSTART_TOKENIZER}.yaml"
    vq_ckpt = _newest(tok_dir / "checkpoints")
    gpt_ckpt = _newest(quickstart / "gpt" / gpt_run / "checkpoints")
    image_size, num_classes = _tiny_size_and_classes(tok_config, vq_ckpt, gpt_ckpt)
    npz = str(quickstart / "eval" / ("val.npz" if image_size == 32 else f"val_{image_size}.npz"))
    return Inputs(tok_config=tok_config, vq_ckpt=vq_ckpt, gpt_model=QUICKSTART_GPT, gpt_ckpt=gpt_ckpt,
                  val_path=str(quickstart / "eval" / "val"), val_npz=npz, gt_npz=npz,
                  imagenet=str(quickstart / "data"), tiny=True, num_classes=num_classes, image_size=image_size)


def make_tiny_reference(inp: Inputs) -> None:
    """The held-out images' reference npz at the tokenizer's size, when it is not the quickstart's 32 px (which
    scripts/quickstart.sh writes): the same centre crops as evaluations.make_val_npz, made once."""
    if not inp.tiny or Path(inp.val_npz).is_file() or not Path(inp.val_path).is_dir():
        return
    from evaluations.make_val_npz import main as make_val_npz
    print(f"[reproduce] the {inp.image_size}-px reference of {inp.val_path}: {inp.val_npz}", flush=True)
    make_val_npz(["--data-path", inp.val_path, "--image-size", str(inp.image_size), "--npz", inp.val_npz,
                  "--workers", "0"])


def missing_inputs(row: Row, inp: Inputs) -> list[str]:
    """What the row needs that is not on disk, each with where to get it."""
    need = []
    if row.kind == "rfid":
        if not Path(inp.val_path).is_dir():
            need.append(f"VAL_PATH={inp.val_path}: the 256-px ImageNet val images; make them (and the npz) with "
                        "bash scripts/val.sh --data-path $IMGNET_ROOT/ILSVRC2012_img_val --sample-dir "
                        "results/reconstructions/img_data")
        if not Path(inp.val_npz).is_file():
            need.append(f"GT_VAL_NPZ_PATH={inp.val_npz}: the rFID reference batch (scripts/val.sh writes it)")
    if row.kind == "gfid" and not Path(inp.gt_npz).is_file():
        need.append(f"GT_NPZ_PATH={inp.gt_npz}: ADM's reference batch VIRTUAL_imagenet256_labeled.npz (download it "
                    "from the guided-diffusion evaluation page: openaipublic ref_batches/imagenet/256/)")
    if row.kind == "probe":
        for split in ("train", "val") if inp.tiny else ("ILSVRC2012_img_train", "ILSVRC2012_img_val"):
            if not (Path(inp.imagenet) / split).is_dir():
                need.append(f"IMGNET_ROOT={inp.imagenet}: needs {split}/ (ImageNet class folders)")
    return need


# ----- the commands ----------------------------------------------------------------------------------------------

def describes_itself(checkpoint: str | None, kind: str) -> bool:
    """A local checkpoint that stores its ``kind`` ("gpt" / "tokenizer") config: its commands need no model flags.
    Released files (Hub names) store none, so their rows keep every flag."""
    if checkpoint is None or not Path(checkpoint).is_file():
        return False
    from utils.checkpoint import CheckpointError, read_model_description
    try:
        description = read_model_description(checkpoint)
    except CheckpointError:
        return False  # the driver reports the file itself
    return description.kind == kind and not description.partial


def model_flags(inp: Inputs, tokenizer_flag: str, num_classes_flag: str | None = None) -> list[str]:
    """The model flags a row's command needs: none for what a checkpoint describes itself."""
    flags = [] if describes_itself(inp.vq_ckpt, "tokenizer") else [tokenizer_flag, inp.tok_config]
    if num_classes_flag is None:
        return flags
    if not describes_itself(inp.gpt_ckpt, "gpt"):
        flags += ["--gpt-model", inp.gpt_model] + ([num_classes_flag, str(inp.num_classes)] if inp.tiny else [])
    return flags


def commands(row: Row, inp: Inputs, out: Path, search: bool) -> list[list[str]]:
    """The entry-script command lines of the row, in order (``bash scripts/<script> ...``)."""
    s, safe = row.settings, row.name.split("/", 1)[1]
    if row.kind == "rfid":
        cmd = ["reconstruction.sh", "--data-path", inp.val_path, "--image-size", str(inp.image_size), "--quant-way",
               "vq", "--sample-dir", str(out / "rfid"), "--run-name", safe, "--vq-ckpt", inp.vq_ckpt,
               *model_flags(inp, "--model-config"), "--gt-npz-path", inp.val_npz, "--precision", s["precision"],
               "--per-proc-batch-size", str(s["per_proc_batch_size"]), "--clear-cache"]
        if not inp.tiny:
            cmd.append("--lpips")  # the tiny chain runs offline: no VGG weights
        else:
            cmd += ["--fid-method", "eigh", "--num-workers", "0"]
        return [cmd]
    if row.kind == "gfid":
        cmd = ["sample_c2i_search_cfg.sh", "--quant-way", "vq", "--image-size", str(inp.image_size), "--sample-dir",
               str(out / "gfid" / safe), "--vq-ckpt", inp.vq_ckpt, *model_flags(inp, "--tok-config", "--num-classes"),
               "--gpt-ckpt", inp.gpt_ckpt, "--cfg-schedule", s["cfg_schedule"], "--step-start-ratio",
               str(s["step_start_ratio"]), "--precision", s["precision"], "--global-seed", str(s["global_seed"]),
               "--gt-npz-path", inp.gt_npz, "--clear-cache"]
        if inp.tiny:  # CPU: fp32 whatever the row's precision
            cmd += ["--num-fid-samples", "60", "--per-proc-batch-size", "30", "--fid-method", "eigh", "--precision",
                    "none"]
        else:
            cmd += ["--num-fid-samples", str(s["num_fid_samples"]), "--per-proc-batch-size",
                    str(s["per_proc_batch_size"])]
        if search or s["cfg_scale"] is None:
            cmd.append("--search")
        else:
            cmd += ["--cfg-scale", str(s["cfg_scale"])]
        return [cmd]
    exp = out / "probe"
    common = ["--save-path", str(exp), "--sub-exp-dir", safe, *model_flags(inp, "--model-config", "--gpt-num-classes"),
              "--vq-ckpt", inp.vq_ckpt, "--gpt-ckpt", inp.gpt_ckpt, "--blr", str(s["blr"]),
              "--ckpt-epoch", str(s["ckpt_epoch"]), "--mixed-precision", s["mixed_precision"]]
    if inp.tiny:
        common += ["--train-path", str(Path(inp.imagenet) / "train"), "--val-path", str(Path(inp.imagenet) / "val"),
                   "--data-path", inp.imagenet, "--epochs", "2", "--warmup-epochs", "1", "--batch-size", "8",
                   "--global-batch-size", "16", "--num-classes", str(inp.num_classes),
                   "--mixed-precision", "none", "--num-workers", "0"]
    else:
        common += ["--data-path", inp.imagenet, "--epochs", str(s["epochs"]), "--batch-size", str(s["batch_size"]),
                   "--global-batch-size", str(s["global_batch_size"])]
    epochs = 2 if inp.tiny else s["epochs"]
    return [["train_lin_probe_gpt.sh", *common],
            ["train_lin_probe_gpt.sh", *common, "--eval", "--lin-probe-ckpt",
             str(exp / safe / "checkpoints" / f"{epochs - 1:04d}.pt")]]


# ----- results -------------------------------------------------------------------------------------------------------

def measured(row: Row, out: Path, cmd: list[str]) -> dict:
    safe = row.name.split("/", 1)[1]
    if row.kind == "rfid":
        m = json.loads((out / "rfid" / safe / "metrics.json").read_text())
        return {"rfid": m["rfid"], "rsfid": m.get("rsfid"), "lpips": m.get("lpips"), "psnr": m["psnr"],
                "ssim": m["ssim"], "num_images": m["num_images"]}
    if row.kind == "gfid":
        from autoregressive import cfg_search
        sample_dir = Path(cmd[cmd.index("--sample-dir") + 1])
        found = sorted((sample_dir.parent / "search_results").glob(f"{sample_dir.name}-*.csv"),
                       key=lambda f: f.stat().st_mtime)
        if not found:
            raise RuntimeError(f"no results CSV for {sample_dir}")
        csv = found[-1]  # the run just made (one CSV per checkpoint / settings key)
        best = cfg_search.best_recorded(csv, row.settings["cfg_schedule"])
        if best is None:
            raise RuntimeError(f"no result row in {csv}")
        scale = None if "--search" in cmd else float(cmd[cmd.index("--cfg-scale") + 1])
        if scale is not None:
            rows_ = [r for r in cfg_search.read_rows(csv) if r.get("cfg_schedule") == row.settings["cfg_schedule"]
                     and round(float(r["cfg_scale"]), 4) == round(scale, 4)]
            best = rows_[-1] if rows_ else best
        return {"gfid": float(best["FID"]), "cfg_scale": float(best["cfg_scale"]), "sfid": float(best["sFID"]),
                "inception_score": float(best["Inception Score"]), "precision": float(best["Precision"]),
                "recall": float(best["Recall"]), "results_csv": str(csv)}
    m = json.loads((out / "probe" / safe / "metrics.json").read_text())
    return {"acc": 100.0 * m["top1"], "top5": 100.0 * m["top5"], "num_images": m["total"]}


def environment() -> dict:
    import torch
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() \
        else []
    return {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
            "gpu": gpus[0] if gpus else None, "gpu_count": len(gpus),
            "processes": int(os.environ.get("GPUS", os.environ.get("NPROC_PER_NODE", "1")))}


def checksums(inp: Inputs, row: Row) -> dict:
    from utils.checkpoint import resolve_checkpoint, sha256_file
    out = {"vq_ckpt": sha256_file(resolve_checkpoint(inp.vq_ckpt))}
    if inp.gpt_ckpt:
        out["gpt_ckpt"] = sha256_file(resolve_checkpoint(inp.gpt_ckpt))
    ref = {"rfid": inp.val_npz, "gfid": inp.gt_npz}.get(row.kind)
    if ref:
        out["reference"] = sha256_file(ref)
    return out


def print_table(table: dict[str, Row]) -> None:
    print(f"{'row':<30} {'paper':<28} settings")
    for name, row in table.items():
        paper = ", ".join(f"{k} {v}" for k, v in row.paper.items())
        s = row.settings
        if row.kind == "gfid":
            cfg = f"CFG {s['cfg_scale']}" if s["cfg_scale"] is not None else "CFG search"
            precision = PRECISION_NAMES[s["precision"]]
            detail = (f"{cfg} at {precision}, step from {s['step_start_ratio']}, {s['num_fid_samples']:,} samples, "
                      "seed 0")
        elif row.kind == "rfid":
            detail = "ImageNet val 256, fp32, rFID + rsFID + LPIPS"
        else:
            g, b = s["global_batch_size"], s["batch_size"]
            detail = (f"{s['epochs']} epochs, global batch {g:,} ({b} per BatchNorm x {g // b} processes x "
                      f"accumulation steps), lr {s['blr'] * g / 256:g}, {s['mixed_precision']}")
        print(f"{name:<30} {paper:<28} {detail}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bash scripts/reproduce.sh", description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("row", help="'list', or a row name such as gfid/GPT-B_VQ_XLXXL (see 'list')")
    p.add_argument("--search", action="store_true", help="gfid: the original's CFG search instead of the given scale")
    p.add_argument("--dry-run", action="store_true", help="print the commands and stop (nothing is checked or run)")
    p.add_argument("--tiny", metavar="QUICKSTART_DIR", default=None,
                   help="run the row's chain on the quickstart's models and data in this folder (offline, CPU)")
    p.add_argument("--tiny-tokenizer", default=QUICKSTART_TOKENIZER, metavar="RUN",
                   help="--tiny: the tokenizer run under QUICKSTART_DIR/tokenizer (e.g. a fine-tune at 64 px); its "
                        "image size is read from its checkpoint")
    p.add_argument("--tiny-gpt", default=QUICKSTART_GPT, metavar="RUN",
                   help="--tiny: the GPT run under QUICKSTART_DIR/gpt; its class count is read from its checkpoint")
    p.add_argument("--out", default="results/reproduce", help="folder of the outputs and <row>.json")
    return p


def main(argv=None) -> dict | None:
    args = build_parser().parse_args(argv)
    table = rows()
    if args.row == "list":
        print_table(table)
        return None
    if args.row not in table:
        from utils.cli import did_you_mean
        sys.exit(f"unknown row {args.row!r}{did_you_mean(args.row, table, cutoff=0.3)} "
                 "('bash scripts/reproduce.sh list' shows every row)")
    row = table[args.row]
    inp = tiny_inputs(Path(args.tiny), args.tiny_tokenizer, args.tiny_gpt) if args.tiny else released_inputs(row)
    out = Path(args.out) / ("tiny" if inp.tiny else "")
    cmds = commands(row, inp, out, args.search)
    if args.dry_run:
        for cmd in cmds:
            print("bash scripts/" + " ".join(shlex.quote(c) for c in cmd))
        return {"row": row.name, "commands": cmds}
    if row.kind != "probe":
        make_tiny_reference(inp)
    need = missing_inputs(row, inp)
    if need:
        sys.exit(f"{row.name} needs files that are not here:\n  " + "\n  ".join(need))
    start = time.time()
    for cmd in cmds:
        print("[reproduce] bash scripts/" + " ".join(shlex.quote(c) for c in cmd), flush=True)
        subprocess.run(["bash", str(REPO / "scripts" / cmd[0]), *cmd[1:]], check=True)
    got = measured(row, out, cmds[-1])
    key = next(iter(row.paper))
    result = {"row": row.name, "kind": row.kind, "tiny": inp.tiny, "paper": row.paper, "measured": got,
              "difference": None if got.get(key) is None else got[key] - row.paper[key],
              "settings": row.settings, "inputs": vars(inp),
              "commands": ["bash scripts/" + shlex.join(c) for c in cmds],
              "environment": environment(), "sha256": checksums(inp, row), "seconds": time.time() - start,
              "created": time.strftime("%Y-%m-%d %H:%M:%S")}
    path = out / f"{row.name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=str))
    print(f"[reproduce] {row.name}: paper {key} {row.paper[key]}, measured {got.get(key)}; details in {path}")
    return result


if __name__ == "__main__":
    from utils.cli import run_cli
    run_cli(main, "reproduce")
