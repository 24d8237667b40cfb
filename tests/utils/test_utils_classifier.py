"""evaluations/classifier.py: the small CNN that checks class-conditional samples show their class.

The synthetic classes are bright bands at the top / middle / bottom third of the image: train_classifier
augments with horizontal flips, so classes must be flip-invariant (left/right bands would be confused).
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from evaluations.classifier import accuracy, main, train_classifier

from testlib import REPO  # noqa: F401  (puts the repo root on sys.path)

SIZE = 16


def bands_uint8(n_per_class: int, seed: int, size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """uint8 NHWC images: class c is bright in horizontal band c of 3, dark elsewhere, plus noise."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(3), n_per_class)
    x = rng.normal(50.0, 25.0, size=(len(labels), size, size, 3))
    third = size // 3
    for c in range(3):
        x[labels == c, c * third:(c + 1) * third] += 150.0
    return np.clip(x, 0, 255).astype(np.uint8), labels


def to_input(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def test_train_classifier_learns_an_easy_task():
    x_np, y_np = bands_uint8(60, seed=1)
    x, y = to_input(x_np), torch.from_numpy(y_np)
    assert x.min() >= -1 and x.max() <= 1
    model = train_classifier(x, y, num_classes=3, epochs=3, batch=32)
    assert not model.training  # returned in eval mode
    xt_np, yt_np = bands_uint8(40, seed=2)
    xt, yt = to_input(xt_np), torch.from_numpy(yt_np)
    acc = accuracy(model, xt, yt)
    assert acc > 0.9
    # accuracy really compares with the labels: shifted labels are almost all wrong
    assert accuracy(model, xt, (yt + 1) % 3) < 0.1


def test_accuracy_counts_correct_argmax():
    class Fixed(torch.nn.Module):
        def forward(self, x):
            return torch.nn.functional.one_hot(x[:, 0, 0, 0].long(), 3).float()

    x = torch.tensor([0, 1, 2, 2, 1]).float()[:, None, None, None].expand(5, 3, 2, 2).contiguous()
    assert accuracy(Fixed(), x, torch.tensor([0, 1, 2, 0, 0])) == pytest.approx(0.6)


def _write_folder(root, images, labels, names=("a_top", "b_middle", "c_bottom")):
    for i, (img, label) in enumerate(zip(images, labels, strict=True)):
        folder = root / names[int(label)]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(folder / f"{i:04d}.png")


def test_cli_writes_json_with_accuracies_and_chance(tmp_path):
    tr_x, tr_y = bands_uint8(40, seed=3)
    va_x, va_y = bands_uint8(10, seed=4)
    _write_folder(tmp_path / "train", tr_x, tr_y)
    _write_folder(tmp_path / "val", va_x, va_y)
    # the "samples" are the held-out images with their true labels, so both accuracies must agree exactly
    np.savez(tmp_path / "samples.npz", arr_0=va_x, labels=va_y)
    out = tmp_path / "clf.json"
    result = main(["--train-dir", str(tmp_path / "train"), "--val-dir", str(tmp_path / "val"),
                   "--samples", str(tmp_path / "samples.npz"), "--image-size", str(SIZE), "--epochs", "3",
                   "--out", str(out)])
    written = json.loads(out.read_text())
    assert written == result
    assert result["chance"] == pytest.approx(1 / 3)
    assert result["num_samples"] == 30
    assert result["classes"] == ["a_top", "b_middle", "c_bottom"]
    for key in ("sample_accuracy", "real_val_accuracy"):
        assert 0.0 <= result[key] <= 1.0
        # accuracies are fractions of 30 images
        assert result[key] * 30 == pytest.approx(round(result[key] * 30), abs=1e-4)
    assert result["sample_accuracy"] == pytest.approx(result["real_val_accuracy"])


def test_cli_npz_without_labels_raises_keyerror(tmp_path):
    tr_x, tr_y = bands_uint8(2, seed=5)
    _write_folder(tmp_path / "train", tr_x, tr_y)
    _write_folder(tmp_path / "val", tr_x, tr_y)
    np.savez(tmp_path / "nolabels.npz", arr_0=tr_x)
    with pytest.raises(KeyError, match="labels"):
        main(["--train-dir", str(tmp_path / "train"), "--val-dir", str(tmp_path / "val"),
              "--samples", str(tmp_path / "nolabels.npz"), "--image-size", str(SIZE), "--epochs", "1"])


def test_cli_checks_samples_and_classes_before_training(tmp_path, monkeypatch):
    import evaluations.classifier as clf

    tr_x, tr_y = bands_uint8(2, seed=6)
    _write_folder(tmp_path / "train", tr_x, tr_y)
    _write_folder(tmp_path / "val", tr_x, tr_y)
    _write_folder(tmp_path / "val_other", tr_x, tr_y, names=("a_top", "b_middle", "z_other"))
    np.savez(tmp_path / "bad_labels.npz", arr_0=tr_x, labels=np.full(len(tr_x), 3))
    monkeypatch.setattr(clf, "train_classifier", lambda *a, **k: pytest.fail("trained before checking the inputs"))
    base = ["--train-dir", str(tmp_path / "train"), "--image-size", str(SIZE), "--epochs", "1"]
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\)"):
        main(base + ["--val-dir", str(tmp_path / "val"), "--samples", str(tmp_path / "bad_labels.npz")])
    with pytest.raises(ValueError, match="z_other"):
        main(base + ["--val-dir", str(tmp_path / "val_other"), "--samples", str(tmp_path / "bad_labels.npz")])
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        main(base + ["--val-dir", str(tmp_path / "val"), "--samples", str(tmp_path / "missing.npz")])
