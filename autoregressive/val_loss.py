"""Validation cross-entropy of a class-conditional GPT on a held-out image folder or code folder.

    python -m autoregressive.val_loss --gpt-ckpt results/gpt/run/checkpoints/0010000.pt \
        --vq-ckpt VQ_XLXXL256_e300.pt --data-path $IMGNET_ROOT/ILSVRC2012_img_val
    GPUS=8 bash scripts/val_loss_c2i.sh ...

Images are ADM centre-cropped and tokenised (as the original); with ``--dataset imagenet_code`` stored codes are
read instead (view ``--view``, 0 = the centre crop when extracted without ``--ten-crop``). Every image is counted
once (ranks take disjoint shards, no padding duplicates). The teacher-forced loss predicts all tokens from the
class label (label dropout is off in eval mode).

Reported: ``val_loss``, the token-weighted mean cross-entropy (nats/token) over the whole set, and
``val_loss_batch_mean``, the original's mean of per-batch means; ``perplexity`` = exp(val_loss); the mean loss
per position. Rank 0 appends a record to ``<run>/val_results.json`` (a list) and the original's two lines
``gpt_iter: <step>`` / ``val_loss: <x>`` to ``<run>/val_results.txt``, ``<run>`` being the folder above the
checkpoint's ``checkpoints/`` folder.

The GPT's model flags (``--gpt-model``, ``--num-classes``, ``--cls-token-num``, ``--qk-norm``, ``--gpt-2d``) and the
tokenizer config default to what the checkpoints record (the GPT's ``gpt_config``, the tokenizer checkpoint's
``config``, the released model's YAML); a flag that contradicts the checkpoint is an error naming both values.
"""
from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from autoregressive.loading import add_variant_flags, gpt_build_config, load_gpt, settle_gpt_flags
from autoregressive.models.gpt import GPT_models
from tokenizer import settle_tokenizer_config, tokenizer_info
from utils.checkpoint import resolve_checkpoint, sha256_file
from utils.cli import HelpFormatter
from utils.compat import add_inert_flags
from utils.data import ImageFolderDataset, collate_skip_bad
from utils.distributed import barrier, finish, init_distributed
from utils.training import PRECISIONS, configure_tf32


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--gpt-ckpt", required=True, help="GPT checkpoint (local file, released name or hf://...)")
    p.add_argument("--gpt-model", choices=list(GPT_models), default=None,
                   help="GPT size preset (None: from the checkpoint's gpt_config/args, else GPT-B)")
    add_inert_flags(p, "--gpt-type", "--from-fsdp", "--quant-way")
    # store_true with default None: "not given" (None) is told apart from "given" (True) to check the checkpoint
    p.add_argument("--gpt-2d", action="store_true", default=None,
                   help="the 2D-RoPE GPT (default: as the checkpoint's gpt_config records; the released GPTs are 1D)")
    p.add_argument("--ema", action="store_true", help="evaluate the checkpoint's EMA weights (its 'ema' entry)")
    p.add_argument("--cls-token-num", type=int, default=None,
                   help="condition tokens before the image tokens; must be 1 for c2i (as the original's gpt_1d; "
                        "default: the checkpoint's, else 1)")
    p.add_argument("--qk-norm", action="store_true", default=None,
                   help="the GPT was trained with QK-norm (default: as the checkpoint's gpt_config records; the "
                        "released GPTs have none)")
    add_variant_flags(p)
    p.add_argument("--flash-attn", action="store_true", help="accepted; PyTorch picks the attention kernel")
    p.add_argument("--num-classes", type=int, default=None,
                   help="number of class labels (None: from the checkpoint, else 1000)")
    p.add_argument("--tok-config", "--model-config", dest="tok_config", default=None,
                   help="tokenizer YAML (vocabulary and length; default: the tokenizer checkpoint's stored config, "
                        "the released model's YAML, or the one the GPT checkpoint records)")
    p.add_argument("--vq-ckpt", default=None, help="tokenizer weights (needed for image folders)")
    p.add_argument("--data-path", default=None, help="held-out ImageFolder (e.g. ILSVRC2012_img_val)")
    p.add_argument("--code-path", default=None, help="held-out codes from autoregressive.extract_codes")
    p.add_argument("--dataset", choices=["imagenet", "imagenet_code"], default=None,
                   help="imagenet: images from --data-path; imagenet_code: codes from --code-path (None: imagenet_code "
                        "when only --code-path is given, else imagenet)")
    p.add_argument("--code-dataset-name", default="imagenet", help="--dataset name used by extract_codes")
    p.add_argument("--view", type=int, default=0, help="stored view to use for codes (0: centre crop)")
    p.add_argument("--image-size", type=int, default=None,
                   help="image side in pixels; must equal the tokenizer's (None: the tokenizer's image size)")
    p.add_argument("--per-proc-batch-size", type=int, default=32,
                   help="images per batch on each process (32 as the original)")
    p.add_argument("--max-images", type=int, default=None, help="only the first N images (None: all)")
    p.add_argument("--global-seed", type=int, default=0, help="unused (evaluation is deterministic)")
    p.add_argument("--early-stop-iter", type=int, default=None,
                   help="accepted for the original's scripts; unused there too (use --max-images to shorten)")
    p.add_argument("--save-path", default=None,
                   help="accepted for the original's scripts; unused there too (results go beside the checkpoint)")
    p.add_argument("--num-workers", type=int, default=min(8, os.cpu_count() or 1),
                   help="DataLoader worker processes per process (8, capped at the CPU count; 0 loads in the main "
                        "process)")
    p.add_argument("--precision", choices=list(PRECISIONS), default="bf16", help="autocast dtype")
    p.add_argument("--compile", action="store_true", help="torch.compile the GPT for the loss pass")
    p.add_argument("--no-tf32", action="store_true", help="keep TF32 off on CUDA (the original turns it on)")
    p.add_argument("--device", default="auto",
                   help="auto (CUDA, else Apple MPS, else CPU), cpu, mps, cuda, cuda:N; under torchrun cuda means "
                        "cuda:LOCAL_RANK")
    p.add_argument("--out-json", default=None, help="JSON list the result is appended to (None: "
                   "<run>/val_results.json)")
    p.add_argument("--no-txt", action="store_true", help="do not append to <run>/val_results.txt")
    args = p.parse_args(argv)
    if args.dataset is None:
        args.dataset = "imagenet_code" if args.code_path and not args.data_path else "imagenet"
    if args.dataset == "imagenet" and not (args.data_path and args.vq_ckpt):
        raise SystemExit("an image folder (--data-path) needs the tokenizer weights (--vq-ckpt)")
    if args.dataset == "imagenet_code" and not args.code_path:
        raise SystemExit("--dataset imagenet_code needs --code-path")
    return args


def settle_models(args: argparse.Namespace) -> tuple[dict, dict]:
    """(GPT config to build, tokenizer info) with the model flags settled against the checkpoints (see
    autoregressive.loading.settle_gpt_flags): a flag not given takes the checkpoint's value, a given one must agree;
    ``args.tok_config`` becomes the tokenizer's config (a path or the stored dict)."""
    description = settle_gpt_flags(args, args.gpt_ckpt)
    args.tok_config = settle_tokenizer_config(args.vq_ckpt, args.tok_config, description)
    tok_info = tokenizer_info(args.tok_config)
    label = args.tok_config if isinstance(args.tok_config, str) else f"stored in {args.vq_ckpt or args.gpt_ckpt}"
    cfg = gpt_build_config(args, description, tok_info["codebook_size"], tok_info["num_tokens"],
                           f"the tokenizer config {label}")
    # evaluation: the dropout settings of training are off; the original's variant switches are refused when built
    cfg.update(rope=args.rope, use_adaLN=args.adaLN, use_simple_adaLN=args.simple_adaLN, token_dropout_p=0.0,
               resid_dropout_p=0.0, ffn_dropout_p=0.0, drop_path_rate=0.0)
    return cfg, tok_info


class _Codes(torch.utils.data.Dataset):
    def __init__(self, base: torch.utils.data.Dataset):
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i):
        codes, label = self.base[i]
        return codes, label, i


@torch.no_grad()
def main(argv=None) -> dict:
    args = parse_args(argv)
    d = init_distributed(args.device)
    args.device = str(d.device)  # results record the device used, not "auto"
    device = d.device
    configure_tf32(device, not args.no_tf32)
    if d.is_main:  # download once; other ranks then read the Hub cache
        resolve_checkpoint(args.gpt_ckpt)
        if args.vq_ckpt:
            resolve_checkpoint(args.vq_ckpt)
    barrier()
    ckpt_path = resolve_checkpoint(args.gpt_ckpt)
    cfg, tok_info = settle_models(args)
    image_size = args.image_size or tok_info["image_size"]
    if image_size != tok_info["image_size"]:
        raise SystemExit(f"--image-size {image_size} does not match the tokenizer's {tok_info['image_size']}")
    if args.ema:
        from utils.checkpoint import load_weights
        model = load_gpt(cfg, None)
        load_weights(model, ckpt_path, context=f"GPT {cfg['gpt_model']} (EMA)", entries=("ema",))
        model = model.to(device).eval()
    else:
        model = load_gpt(cfg, ckpt_path, device=device)  # strict: every key must match
    fwd = torch.compile(model) if args.compile else model

    if args.dataset == "imagenet_code":
        from autoregressive.packed_codes import open_codes
        # packed codes (extract_codes --format packed) are auto-detected
        dataset = _Codes(open_codes(args.code_path, args.code_dataset_name, image_size, view=args.view))
        tokenizer = None
    else:
        from tokenizer import load_tokenizer
        if d.is_main:
            resolve_checkpoint(args.vq_ckpt)
        barrier()
        dataset = ImageFolderDataset(args.data_path, image_size)  # ADM centre crop, [-1, 1]
        tokenizer = load_tokenizer(args.tok_config, resolve_checkpoint(args.vq_ckpt), device=device)
    n_total = len(dataset) if args.max_images is None else min(args.max_images, len(dataset))
    mine = list(range(d.rank, n_total, d.world_size))
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, mine), batch_size=args.per_proc_batch_size,
                                         num_workers=args.num_workers, collate_fn=collate_skip_bad,
                                         pin_memory=device.type == "cuda")
    amp = PRECISIONS[args.precision]
    T = tok_info["num_tokens"]
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    tokens = torch.zeros((), dtype=torch.float64, device=device)
    pos_sum = torch.zeros(T, dtype=torch.float64, device=device)
    images = torch.zeros((), dtype=torch.float64, device=device)
    batch_means: list[float] = []
    skipped: list[int] = []
    for x, labels, _, bad in tqdm(loader, disable=not d.is_main, desc="val loss"):
        skipped += bad.tolist()
        if x.numel() == 0:
            continue
        if tokenizer is not None:
            z = tokenizer.encode_to_codes(x.to(device, non_blocking=True))
        else:
            z = x.to(device, non_blocking=True)
        if z.shape[1] != T:
            raise SystemExit(f"codes have {z.shape[1]} tokens, the tokenizer config {T}")
        c = labels.to(device)
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            logits, _ = fwd(cond_idx=c, idx=z[:, :-1])
        ce = F.cross_entropy(logits.float().transpose(1, 2), z, reduction="none").double()  # [B, T]
        loss_sum += ce.sum()
        tokens += ce.numel()
        pos_sum += ce.sum(0)
        images += ce.shape[0]
        batch_means.append(float(ce.mean()))
    barrier()
    totals = torch.cat([loss_sum.reshape(1), tokens.reshape(1), images.reshape(1), pos_sum])
    all_means, all_skipped = [batch_means], [skipped]
    if d.distributed:
        dist.all_reduce(totals)
        all_means = [None] * d.world_size
        all_skipped = [None] * d.world_size
        dist.all_gather_object(all_means, batch_means)
        dist.all_gather_object(all_skipped, skipped)
    loss_sum, tokens, images, pos_sum = totals[0].item(), totals[1].item(), totals[2].item(), totals[3:]
    means = [m for ms in all_means for m in ms]
    if tokens == 0:
        raise SystemExit("no images could be evaluated")
    val_loss = loss_sum / tokens
    result = {
        "gpt_ckpt": str(args.gpt_ckpt), "gpt_iter": Path(str(args.gpt_ckpt)).stem, "gpt_model": cfg["gpt_model"],
        "ema": args.ema,
        "val_loss": val_loss, "val_loss_batch_mean": sum(means) / len(means), "perplexity": math.exp(val_loss),
        "num_images": int(images), "num_tokens": int(tokens),
        "skipped_images": sorted(i for s in all_skipped for i in s),
        "per_position_loss": (pos_sum / images).tolist(), "precision": args.precision,
        "tf32": device.type == "cuda" and not args.no_tf32,
        "data": str(args.data_path if args.dataset == "imagenet" else args.code_path), "dataset": args.dataset,
        "tok_config": args.tok_config if isinstance(args.tok_config, dict) else str(args.tok_config),
        "vq_ckpt": args.vq_ckpt, "world_size": d.world_size,
        "per_proc_batch_size": args.per_proc_batch_size,
    }
    if d.is_main:
        result["gpt_ckpt_sha256"] = sha256_file(ckpt_path)
        run_dir = Path(os.path.dirname(os.path.dirname(os.path.abspath(str(ckpt_path)))))
        out_json = Path(args.out_json) if args.out_json else run_dir / "val_results.json"
        records = []
        if out_json.is_file():
            try:
                records = json.loads(out_json.read_text())
                records = records if isinstance(records, list) else [records]
            except json.JSONDecodeError:
                records = []
        records.append(result)
        out_json.parent.mkdir(parents=True, exist_ok=True)
        tmp = out_json.with_name(f".{out_json.name}.tmp")
        tmp.write_text(json.dumps(records, indent=2))
        os.replace(tmp, out_json)
        if not args.no_txt:
            with open(run_dir / "val_results.txt", "a") as fh:
                fh.write(f"gpt_iter: {result['gpt_iter']} \n")
                fh.write(f"val_loss: {val_loss:.6f} \n")
        print(f"val_loss: {val_loss:.6f} (token-weighted; mean of batch means {result['val_loss_batch_mean']:.6f}) "
              f"over {int(images)} images; written to {out_json}", flush=True)
    finish()
    return result


if __name__ == "__main__":
    from utils.cli import run_cli
    run_cli(main, "val_loss")
