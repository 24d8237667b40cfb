"""MAE-recipe linear probe on toy features."""
from __future__ import annotations

import math

import pytest
import torch

from evaluations.lin_probe import LARS, LinearProbeHead, ProbeConfig, fit_on_tensors, lr_at


def _toy(n_per_class: int, classes: int = 10, dim: int = 32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=torch.Generator().manual_seed(99)) * 3
    y = torch.arange(classes).repeat_interleave(n_per_class)
    x = centres[y] + torch.randn(len(y), dim, generator=g) + 5.0  # offset: the BatchNorm must centre it
    return x, y


def test_separable_toy_features_reach_high_accuracy():
    (xt, yt), (xv, yv) = _toy(60, seed=0), _toy(20, seed=1)
    # LARS moves the head weight by ~lr * trust_coefficient of its norm per step: ImageNet gets ~10^5 steps at
    # lr 0.4, a 600-sample toy set needs a larger base lr for its ~150 steps. Everything else is the recipe.
    cfg = ProbeConfig(epochs=8, warmup_epochs=1, blr=25.6)
    result = fit_on_tensors(xt, yt, xv, yv, num_classes=10, cfg=cfg, batch_size=32)
    assert result["top1"] > 0.95 and result["top5"] >= result["top1"]
    assert result["total"] == 200
    assert result["history"][-1]["loss"] < result["history"][0]["loss"]


def test_head_layout_and_init():
    head = LinearProbeHead(16, 1000)
    assert not head.bn.affine and head.bn.eps == 1e-6
    assert head.head.weight.std().item() == pytest.approx(0.01, rel=0.1)
    assert set(head.state_dict()) == {"bn.running_mean", "bn.running_var", "bn.num_batches_tracked",
                                      "head.weight", "head.bias"}


def test_lr_schedule_warmup_then_half_cosine():
    cfg = ProbeConfig()  # 10 warm-up + 80 cosine epochs, min_lr 0
    base = cfg.lr(batch_per_gpu=128, world_size=8)
    assert base == pytest.approx(0.1 * 1024 / 256)
    assert lr_at(0, base, cfg) == 0
    assert lr_at(5, base, cfg) == pytest.approx(base / 2)
    assert lr_at(10, base, cfg) == pytest.approx(base)
    assert lr_at(50, base, cfg) == pytest.approx(base * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_at(90, base, cfg) == pytest.approx(0, abs=1e-12)


def test_lars_step_matches_formula():
    w = torch.nn.Parameter(torch.tensor([[3.0, 4.0]]))
    b = torch.nn.Parameter(torch.tensor([1.0]))
    opt = LARS([w, b], lr=0.5, weight_decay=0.1, momentum=0.9, trust_coefficient=0.001)
    w.grad = torch.tensor([[1.0, 0.0]])
    b.grad = torch.tensor([2.0])
    opt.step()
    upd = torch.tensor([[1.0, 0.0]]) + 0.1 * torch.tensor([[3.0, 4.0]])
    ratio = 0.001 * 5.0 / upd.norm()
    torch.testing.assert_close(w.detach(), torch.tensor([[3.0, 4.0]]) - 0.5 * ratio * upd)
    torch.testing.assert_close(b.detach(), torch.tensor([1.0 - 0.5 * 2.0]))  # 1-D: plain momentum SGD, no decay
    w.grad, b.grad = torch.zeros_like(w), torch.zeros_like(b)
    before = b.detach().clone()
    opt.step()  # zero gradient: the momentum buffer keeps moving the bias
    torch.testing.assert_close(b.detach(), before - 0.5 * 0.9 * 2.0)


def test_training_crops_differ_across_images_and_epochs_yet_repeat_for_a_seed():
    """The probe's augmentation is keyed by (seed, epoch, index): the same through any number of DataLoader
    workers, new every epoch, and identical when rerun with the seed."""
    from evaluations.lin_probe import EpochAugmentedFolder

    from testlib import PHOTOS

    def epoch_batch(seed: int, epoch: int, workers: int) -> torch.Tensor:
        ds = EpochAugmentedFolder(PHOTOS, 32, seed)
        ds.set_epoch(epoch)
        loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=workers,
                                             collate_fn=lambda b: torch.stack([x for x, _, _ in b]))
        return torch.cat(list(loader))

    a0 = epoch_batch(0, 0, workers=0)
    assert torch.equal(a0, epoch_batch(0, 0, workers=2))  # workers do not change the crops
    assert not torch.equal(a0, epoch_batch(0, 1, workers=2))  # a new epoch, new crops
    assert not torch.equal(a0, epoch_batch(1, 0, workers=0))  # another seed
    ds = EpochAugmentedFolder(PHOTOS, 32, 0)
    same_file = [ds.to_tensor(ds.load_rgb(0), i) for i in (0, 1)]
    assert not torch.equal(*same_file)  # the stream depends on the index, not only on the epoch
