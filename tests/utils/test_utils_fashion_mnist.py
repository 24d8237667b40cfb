"""utils/fashion_mnist.py: the shipped Fashion-MNIST subset exported as ImageFolder trees of RGB PNGs."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from utils.fashion_mnist import SUBSET, class_folder, export_image_folders, load_subset

from testlib import REPO  # noqa: F401  (puts the repo root on sys.path)


@pytest.fixture(scope="module")
def subset():
    return load_subset()


def _tree(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_subset_is_shipped_with_ten_classes(subset):
    assert SUBSET.is_file()
    assert len(subset["class_names"]) == 10
    assert subset["val_images"].shape[1:] == (28, 28) and subset["val_images"].dtype == np.uint8
    assert set(np.unique(subset["val_labels"])) == set(range(10))


def test_class_folder_sorts_in_label_order_and_is_path_safe(subset):
    names = subset["class_names"]
    folders = [class_folder(i, names) for i in range(10)]
    assert folders == sorted(folders)
    assert folders[0] == "00_T-shirt-top"  # '/' would create a sub-folder
    assert class_folder(9, names) == "09_Ankle_boot"


def test_export_val_only_with_limit(tmp_path, subset):
    out = tmp_path / "fm"
    counts = export_image_folders(out, limit_per_class=3, splits=("val",))
    assert counts == {"val": 30}
    assert sorted(p.name for p in out.iterdir()) == ["class_names.txt", "val"]
    names = [str(n) for n in subset["class_names"]]
    folders = sorted(p.name for p in (out / "val").iterdir())
    assert folders == [f"{i:02d}_{n.replace('/', '-').replace(' ', '_')}" for i, n in enumerate(names)]
    for folder in folders:
        pngs = sorted((out / "val" / folder).iterdir())
        assert len(pngs) == 3 and all(p.suffix == ".png" for p in pngs)
        for png in pngs:
            with Image.open(png) as im:
                assert im.mode == "RGB" and im.size == (28, 28)
    assert (out / "class_names.txt").read_text().splitlines() == names


def test_exported_pngs_equal_the_npz_images(tmp_path, subset):
    out = tmp_path / "fm"
    export_image_folders(out, limit_per_class=3, splits=("val",))
    images, labels = subset["val_images"], subset["val_labels"]
    for label in (0, 4, 9):
        first = int(np.flatnonzero(labels == label)[0])
        png = out / "val" / class_folder(label, subset["class_names"]) / f"{first:05d}.png"
        assert png.is_file()
        with Image.open(png) as im:
            rgb = np.asarray(im)
            gray = np.asarray(im.convert("L"))
        np.testing.assert_array_equal(gray, images[first])
        # grey replicated in all three channels
        np.testing.assert_array_equal(rgb, np.repeat(images[first][..., None], 3, axis=2))
        # the three files of the class are the first three images with that label, in order
        firsts = np.flatnonzero(labels == label)[:3]
        got = sorted(p.name for p in png.parent.iterdir())
        assert got == [f"{i:05d}.png" for i in firsts]


def test_export_is_idempotent(tmp_path):
    out = tmp_path / "fm"
    first = export_image_folders(out, limit_per_class=3, splits=("val",))
    tree = _tree(out)
    second = export_image_folders(out, limit_per_class=3, splits=("val",))
    assert first == second == {"val": 30}
    assert _tree(out) == tree
    assert len(tree) == 31  # 30 PNGs + class_names.txt


def test_export_both_splits_small(tmp_path):
    counts = export_image_folders(tmp_path, limit_per_class=1)
    assert counts == {"train": 10, "val": 10}
    assert len(list((tmp_path / "train").rglob("*.png"))) == 10
    assert len(list((tmp_path / "val").rglob("*.png"))) == 10


def test_unknown_split_raises(tmp_path):
    with pytest.raises(ValueError, match="test"):
        export_image_folders(tmp_path / "x", splits=("val", "test"))
    assert not (tmp_path / "x").exists()  # rejected before anything is written
