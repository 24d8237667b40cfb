"""A small CNN classifier trained on real labelled images, used to check that class-conditional samples show
their class (the quickstart's "are the sampled classes recognisable" test on small datasets).

    python -m evaluations.classifier --train-dir D/train --val-dir D/val --samples SAMPLES.npz --out clf.json

``SAMPLES.npz`` holds ``arr_0`` (uint8 NHWC) and ``labels`` (the class each sample was generated for).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from utils.data import ImageFolderDataset, center_crop_arr, to_model_range


class SmallCNN(nn.Module):
    def __init__(self, num_classes: int, width: int = 32):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 4 * width, 3, padding=1), nn.BatchNorm2d(4 * width), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1))
        self.head = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


def load_folder(folder: str | Path, image_size: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """All images of an ImageFolder tree as one [-1, 1] tensor (small datasets only) with labels."""
    ds = ImageFolderDataset(folder, image_size)
    xs, ys = [], []
    for i in range(len(ds)):
        x, y, _ = ds[i]
        if x is not None:
            xs.append(x)
            ys.append(y)
    return torch.stack(xs), torch.tensor(ys), ds.classes


def uint8_to_input(images: np.ndarray, image_size: int) -> torch.Tensor:
    from PIL import Image
    return torch.stack([to_model_range(center_crop_arr(Image.fromarray(im), image_size)) for im in images])


def train_classifier(x: torch.Tensor, y: torch.Tensor, num_classes: int, epochs: int = 8, batch: int = 128,
                     lr: float = 2e-3, seed: int = 0) -> SmallCNN:
    torch.manual_seed(seed)
    model = SmallCNN(num_classes)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * ((len(x) + batch - 1) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        for k in range(0, len(x), batch):
            idx = perm[k: k + batch]
            xb = x[idx]
            flip = torch.rand(len(idx), generator=gen) < 0.5
            xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
            loss = F.cross_entropy(model(xb), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    preds = torch.cat([model(x[k: k + 256]).argmax(1) for k in range(0, len(x), 256)])
    return float((preds == y).float().mean())


def read_samples(path: str | Path, num_classes: int) -> tuple[np.ndarray, torch.Tensor]:
    """``arr_0`` (uint8 NHWC) and ``labels`` of a samples npz, checked before any training is spent."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"samples npz {str(path)!r} does not exist")
    with np.load(path) as data:
        if "labels" not in data.files:
            raise KeyError(f"{path} has no 'labels' array (the class each sample was generated for)")
        samples, labels = data["arr_0"], torch.from_numpy(data["labels"]).long()
    if samples.ndim != 4 or samples.shape[-1] != 3 or len(samples) != len(labels):
        raise ValueError(f"{path}: expected arr_0 [N, H, W, 3] and N labels, "
                         f"got {samples.shape} and {tuple(labels.shape)}")
    if len(labels) == 0:
        raise ValueError(f"{path} holds no samples")
    if (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"{path}: labels must be in [0, {num_classes}) (the training folder's classes), "
                         f"got {int(labels.min())}..{int(labels.max())}")
    return samples, labels


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train-dir", required=True, help="ImageFolder tree of real training images")
    p.add_argument("--val-dir", required=True, help="ImageFolder tree of real held-out images (same class folders)")
    p.add_argument("--samples", required=True, help="npz with arr_0 (uint8 NHWC samples) and labels")
    p.add_argument("--image-size", type=int, default=32, help="classifier input size (default: 32)")
    p.add_argument("--epochs", type=int, default=8, help="training epochs (default: 8)")
    p.add_argument("--batch-size", type=int, default=128, help="training batch size (default: 128)")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    x_tr, y_tr, classes = load_folder(args.train_dir, args.image_size)
    x_va, y_va, val_classes = load_folder(args.val_dir, args.image_size)
    if list(val_classes) != list(classes):
        raise ValueError(f"--val-dir classes {list(val_classes)} differ from --train-dir classes {list(classes)}")
    samples, labels = read_samples(args.samples, len(classes))
    model = train_classifier(x_tr, y_tr, len(classes), epochs=args.epochs, batch=args.batch_size)
    x_s = uint8_to_input(samples, args.image_size)
    per_class = {}
    with torch.no_grad():
        preds = torch.cat([model(x_s[k: k + 256]).argmax(1) for k in range(0, len(x_s), 256)])
    for c, name in enumerate(classes):
        mask = labels == c
        if mask.any():
            per_class[name] = float((preds[mask] == c).float().mean())
    result = {"real_val_accuracy": accuracy(model, x_va, y_va),
              "sample_accuracy": float((preds == labels).float().mean()),
              "per_class_sample_accuracy": per_class,
              "num_samples": int(len(samples)), "chance": 1.0 / len(classes), "classes": classes,
              "samples": str(args.samples), "epochs": args.epochs}
    print(f"[classifier] accuracy on real held-out images {result['real_val_accuracy']:.3f}; "
          f"on generated samples {result['sample_accuracy']:.3f} (chance {result['chance']:.3f})")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    from utils.cli import run_cli
    run_cli(main, "classifier")
