"""The probe's global batch: gradient accumulation on 1 and 2 real torchrun processes (gloo, CPU) gives the update of
one global batch as the original's many GPUs took it (each rank's chunk through the BatchNorm alone, gradients
averaged, rank 0's running statistics), and evaluation counts every image exactly once on any process count.

Under torchrun this file runs its ``__main__`` block: the probe's sampler and training loop on seeded features."""
from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from evaluations.lin_probe import (
    LARS,
    LinearProbeHead,
    ProbeBatchSampler,
    ProbeConfig,
    ShardSampler,
    evaluate_linear_probe,
    lr_at,
    train_linear_probe,
)

if __name__ != "__main__":  # under torchrun only the worker runs
    import pytest

    from testlib import torchrun

N_TRAIN, N_VAL, DIM, CLASSES = 48, 11, 6, 3  # 11 validation samples: no process count > 1 divides them
MICRO, GLOBAL = 4, 16  # 4 chunks per step: 4 accumulation steps on 1 process, 2 on 2 processes
CFG = ProbeConfig(epochs=2, warmup_epochs=1, blr=12.8)  # 3 steps per epoch; lr 0.8 after the warm-up


def toy_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, CLASSES, (n,), generator=g)
    x = torch.randn(CLASSES, DIM, generator=torch.Generator().manual_seed(7))[y] * 2 + torch.randn(n, DIM, generator=g)
    return x + 3.0, y  # offset: the BatchNorm has something to remove


def fresh_head() -> LinearProbeHead:
    torch.manual_seed(0)
    return LinearProbeHead(DIM, CLASSES)


def worker(out: Path) -> None:
    """One process of the run: the probe's own sampler and loop, then evaluation on disjoint shards."""
    from utils.distributed import init_distributed

    d = init_distributed("cpu")
    x, y = toy_data(N_TRAIN, 0)
    sampler = ProbeBatchSampler(N_TRAIN, MICRO, GLOBAL, d.rank, d.world_size, seed=0)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_sampler=sampler)
    head = fresh_head()
    history = train_linear_probe(head, loader, CFG, batch_per_gpu=MICRO, accum_steps=sampler.accum_steps,
                                 set_epoch=sampler.set_epoch)
    xv, yv = toy_data(N_VAL, 1)
    val = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(xv, yv), batch_size=2,
                                      sampler=ShardSampler(N_VAL, d.rank, d.world_size))
    result = evaluate_linear_probe(head, val)
    if d.rank == 0:
        torch.save({"state": head.state_dict(), "history": history, "eval": result,
                    "accum_steps": sampler.accum_steps}, out)


def one_big_batch_reference() -> tuple[dict, int]:
    """The original's run on GLOBAL // MICRO GPUs written out as one global batch per step: every chunk
    (DistributedSampler's stride) normalised on its own, the loss the mean of the chunks' means, one backward, one
    LARS step; the running statistics those of chunk 0 (rank 0's, which DDP broadcasts)."""
    x, y = toy_data(N_TRAIN, 0)
    head = fresh_head().train()
    base_lr = CFG.blr * GLOBAL / 256
    opt = LARS(head.parameters(), lr=base_lr, weight_decay=CFG.weight_decay, momentum=CFG.momentum,
               trust_coefficient=CFG.trust_coefficient)
    chunks, steps_per_epoch, steps = GLOBAL // MICRO, N_TRAIN // GLOBAL, 0
    for epoch in range(CFG.epochs):
        order = torch.randperm(N_TRAIN, generator=torch.Generator().manual_seed(epoch))
        for step in range(steps_per_epoch):
            for group in opt.param_groups:
                group["lr"] = lr_at(step / steps_per_epoch + epoch, base_lr, CFG)
            block = order[step * GLOBAL:(step + 1) * GLOBAL]
            losses = []
            for j in range(chunks):
                kept = {k: v.clone() for k, v in head.bn.state_dict().items()}
                idx = block[j::chunks]
                losses.append(F.cross_entropy(head(x[idx]), y[idx]))
                if j > 0:  # another GPU's replica: its running statistics are overwritten by rank 0's
                    head.bn.load_state_dict(kept)
            opt.zero_grad()
            torch.stack(losses).mean().backward()
            opt.step()
            steps += 1
    return head.state_dict(), steps


if __name__ != "__main__":
    @pytest.fixture(scope="module")
    def runs(tmp_path_factory) -> dict[int, dict]:
        folder = tmp_path_factory.mktemp("probe_global_batch")
        out = {}
        for nproc in (1, 2):
            torchrun(__file__, [str(folder / f"{nproc}.pt")], nproc=nproc)
            out[nproc] = torch.load(folder / f"{nproc}.pt", weights_only=False)
        return out

    def test_accumulated_update_equals_one_global_batch_on_1_and_2_processes(runs):
        reference, steps = one_big_batch_reference()
        assert [runs[1]["accum_steps"], runs[2]["accum_steps"]] == [4, 2]
        for nproc, run in runs.items():
            assert run["history"][-1]["steps"] == steps == 6
            for key, want in reference.items():
                torch.testing.assert_close(run["state"][key], want, rtol=1e-5, atol=1e-6, msg=f"{nproc} {key}")
        # the run moved the head: the comparison is not between two untouched initialisations
        assert not torch.allclose(reference["head.weight"], fresh_head().state_dict()["head.weight"])

    def test_evaluation_counts_every_image_once_when_the_processes_do_not_divide_the_set(runs):
        assert runs[1]["eval"]["total"] == runs[2]["eval"]["total"] == N_VAL
        assert runs[2]["eval"]["top1"] == runs[1]["eval"]["top1"]

    def test_without_accumulation_each_process_gets_the_original_per_rank_batches():
        """global batch = batch x processes: the batches of the original's DistributedSampler(shuffle, seed) and
        drop_last DataLoader, rank by rank and epoch by epoch."""
        n, micro, world = 37, 3, 4
        for rank in range(world):
            ours = ProbeBatchSampler(n, micro, micro * world, rank, world, seed=5)
            theirs = torch.utils.data.DistributedSampler(range(n), world, rank, shuffle=True, seed=5)
            for epoch in (0, 1):
                ours.set_epoch(epoch)
                theirs.set_epoch(epoch)
                loader = torch.utils.data.DataLoader(range(n), batch_size=micro, sampler=theirs, drop_last=True)
                assert list(ours) == [batch.tolist() for batch in loader]

    def test_chunks_of_a_step_do_not_depend_on_the_process_count():
        def chunks(world: int) -> list[set[int]]:
            per_rank = [list(ProbeBatchSampler(40, 2, 8, r, world, seed=1)) for r in range(world)]
            accum = 4 // world
            return [set(per_rank[r][s * accum + a]) for s in range(5) for a in range(accum) for r in range(world)]
        assert sorted(map(sorted, chunks(1))) == sorted(map(sorted, chunks(2))) == sorted(map(sorted, chunks(4)))
        with pytest.raises(ValueError, match="multiple of the batch per process 3 x 2"):
            ProbeBatchSampler(40, 3, 8, 0, 2)

    def test_shard_sampler_covers_every_index_exactly_once():
        for n, world in ((50_000, 64), (11, 2), (3, 8)):
            seen = [i for r in range(world) for i in ShardSampler(n, r, world)]
            assert sorted(seen) == list(range(n))


if __name__ == "__main__":
    worker(Path(sys.argv[1]))
