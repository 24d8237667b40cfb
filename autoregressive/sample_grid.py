"""The class-grid job (``sample_c2i --mode visualize``): ``--qual-num`` images over ``--class-idx``, one PNG each,
a grid per class and ``multi_class_grid.png``, all built from the images in memory."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from autoregressive.sample_inputs import Sampler, check_out_folder, class_names, parse_class_ids, run_key, settings
from utils.distributed import barrier
from utils.images import save_grid


def visualize(args, sampler: Sampler, dist) -> Path:
    ids = parse_class_ids(args.class_idx, args.num_classes)
    names = class_names(args)
    # first synonym, made safe as a file name ("T-shirt/top" -> "T-shirt_top")
    short = [re.sub(r"[^\w.+-]+", "_", names[i].split(",")[0].strip()).strip("_") or f"class{i}" for i in ids]
    folder = Path(args.out) if args.out else Path(args.sample_dir) / (
        f"{args.gpt_model}-topk-{args.top_k}-topp-{args.top_p}-temp-{args.temperature}-cfg-{args.cfg_scale}"
        f"-{args.cfg_schedule}-{run_key(args)}-seed-{args.global_seed}")
    check_out_folder(folder, args)
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
