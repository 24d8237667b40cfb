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


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train-dir", required=True, help="ImageFolder tree of real training images")
    p.add_argument("--val-dir", required=True, help="ImageFolder tree of real held-out images")
    p.add_argument("--samples", required=True, help="npz with arr_0 (uint8 NHWC samples) and labels")
    p.add_argument("--image-size", type=int, default=32, help="classifier input size")
    p.add_argument("--epochs", type=int, default=8, help="training epochs")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    x_tr, y_tr, classes = load_folder(args.train_dir, args.image_size)
    x_va, y_va, _ = load_folder(args.val_dir, args.image_size)
    model = train_classifier(x_tr, y_tr, len(classes), epochs=args.epochs)
    with np.load(args.samples) as data:
        if "labels" not in data.files:
            raise KeyError(f"{args.samples} has no 'labels' array (the class each sample was generated for)")
        samples, labels = data["arr_0"], torch.from_numpy(data["labels"]).long()
    x_s = uint8_to_input(samples, args.image_size)
    result = {"real_val_accuracy": accuracy(model, x_va, y_va), "sample_accuracy": accuracy(model, x_s, labels),
              "num_samples": int(len(samples)), "chance": 1.0 / len(classes), "classes": classes}
    print(f"[classifier] accuracy on real held-out images {result['real_val_accuracy']:.3f}; "
          f"on generated samples {result['sample_accuracy']:.3f} (chance {result['chance']:.3f})")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
