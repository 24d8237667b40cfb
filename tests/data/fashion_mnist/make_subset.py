"""Build fashion_mnist_subset.npz (class-balanced Fashion-MNIST subset) from Debian's dataset-fashion-mnist package.

    apt-get install dataset-fashion-mnist && python tests/data/fashion_mnist/make_subset.py

Fashion-MNIST (Zalando Research) is MIT-licensed. Kept: the first TRAIN_PER_CLASS training images and the first
VAL_PER_CLASS test images of each class, 28x28 uint8 grayscale (converted to RGB by the loaders).
"""
import gzip
from pathlib import Path

import numpy as np

SRC = Path("/usr/share/datasets/fashion-mnist")
TRAIN_PER_CLASS, VAL_PER_CLASS = 300, 60
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def read(kind: str):
    with gzip.open(SRC / f"{kind}-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(SRC / f"{kind}-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)
    return images, labels


def balanced(images, labels, per_class):
    idx = np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in range(10)])
    idx.sort()
    return images[idx], labels[idx].astype(np.int64)


if __name__ == "__main__":
    tr_x, tr_y = balanced(*read("train"), TRAIN_PER_CLASS)
    va_x, va_y = balanced(*read("t10k"), VAL_PER_CLASS)
    out = Path(__file__).resolve().parents[3] / "utils" / "fashion_mnist_data" / "fashion_mnist_subset.npz"
    np.savez_compressed(out, train_images=tr_x, train_labels=tr_y, val_images=va_x, val_labels=va_y,
                        class_names=np.array(CLASSES))
    print(out, tr_x.shape, va_x.shape, out.stat().st_size // 1024, "KiB")
