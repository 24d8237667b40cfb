"""utils/checkpoint.py: atomic saving, safe loading, entry selection and the strict loader's error message."""
from __future__ import annotations

import os
import pickle

import pytest
import torch

from utils.checkpoint import (
    CheckpointError,
    load_checkpoint_file,
    load_state_dict_strict,
    save_atomic,
    select_state_dict,
    strip_prefixes,
)

from testlib import REPO  # noqa: F401  (puts the repo root on sys.path)


def _leftovers(folder, keep):
    return sorted(p.name for p in folder.iterdir() if p.name != keep)


def test_save_atomic_round_trip_and_no_temp_file(tmp_path):
    obj = {"model": {"w": torch.arange(6.0).reshape(2, 3)}, "step": 7}
    path = save_atomic(obj, tmp_path / "deep" / "ckpt.pt")
    assert path == tmp_path / "deep" / "ckpt.pt" and path.is_file()
    loaded = load_checkpoint_file(path)
    assert loaded["step"] == 7
    torch.testing.assert_close(loaded["model"]["w"], obj["model"]["w"])
    assert _leftovers(path.parent, "ckpt.pt") == []


def test_save_atomic_overwrites_existing_file(tmp_path):
    path = tmp_path / "ckpt.pt"
    save_atomic({"v": torch.tensor([1.0])}, path)
    save_atomic({"v": torch.tensor([2.0])}, path)
    assert load_checkpoint_file(path)["v"].item() == 2.0
    assert _leftovers(tmp_path, "ckpt.pt") == []


def test_failure_part_way_keeps_previous_file_and_removes_temp(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    save_atomic({"v": torch.tensor([1.0, 2.0])}, path)
    good = path.read_bytes()

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"PARTIAL" * 100)  # some bytes reach the temporary file before the failure
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_atomic({"v": torch.tensor([3.0])}, path)
    monkeypatch.undo()
    assert path.read_bytes() == good
    torch.testing.assert_close(load_checkpoint_file(path)["v"], torch.tensor([1.0, 2.0]))
    assert _leftovers(tmp_path, "ckpt.pt") == []


# pickle reports a local lambda as PicklingError or (Python < 3.14) AttributeError
UNPICKLABLE = (pickle.PicklingError, AttributeError)


def test_unpicklable_object_keeps_previous_file(tmp_path):
    path = tmp_path / "ckpt.pt"
    save_atomic({"v": torch.tensor([5.0])}, path)
    good = path.read_bytes()
    with pytest.raises(UNPICKLABLE, match="pickle"):
        save_atomic({"v": torch.tensor([6.0]), "fn": lambda x: x}, path)
    assert path.read_bytes() == good
    assert _leftovers(tmp_path, "ckpt.pt") == []


def test_failed_first_save_leaves_nothing(tmp_path):
    path = tmp_path / "new.pt"
    with pytest.raises(UNPICKLABLE, match="pickle"):
        save_atomic({"fn": lambda x: x}, path)
    assert list(tmp_path.iterdir()) == []


def test_load_missing_file_names_the_path(tmp_path):
    missing = tmp_path / "absent_weights.pt"
    with pytest.raises(CheckpointError, match="absent_weights.pt") as info:
        load_checkpoint_file(missing)
    assert str(missing) in str(info.value)


def test_load_truncated_file_is_a_checkpoint_error(tmp_path):
    path = tmp_path / "trunc.pt"
    save_atomic({"w": torch.randn(64)}, path)
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(CheckpointError, match="trunc.pt"):
        load_checkpoint_file(path)


class _Custom:
    """An arbitrary class: weights_only loading must refuse to unpickle it."""


def test_load_refuses_arbitrary_pickled_objects(tmp_path):
    path = tmp_path / "unsafe.pt"
    torch.save({"obj": _Custom()}, path)
    with pytest.raises(CheckpointError, match="unsafe.pt"):
        load_checkpoint_file(path)


def test_load_non_dict_is_rejected(tmp_path):
    path = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(CheckpointError, match="list"):
        load_checkpoint_file(path)


def test_select_state_dict_prefers_ema_then_model_then_state_dict():
    ema, model, sd = {"w": torch.zeros(1)}, {"w": torch.ones(1)}, {"w": torch.full((1,), 2.0)}
    assert select_state_dict({"ema": ema, "model": model, "state_dict": sd})["w"].item() == 0.0
    assert select_state_dict({"model": model, "state_dict": sd, "step": 3})["w"].item() == 1.0
    assert select_state_dict({"state_dict": sd, "args": None})["w"].item() == 2.0
    # a bare state dict is returned as is
    assert select_state_dict({"a": torch.zeros(2), "b": torch.ones(1)}).keys() == {"a", "b"}
    # the entries order can be changed
    assert select_state_dict({"ema": ema, "model": model}, entries=("model", "ema"))["w"].item() == 1.0


def test_select_state_dict_without_weights_names_source():
    with pytest.raises(CheckpointError, match="my.pt"):
        select_state_dict({"step": 1, "optimizer": 2}, source="my.pt")
    with pytest.raises(CheckpointError):
        select_state_dict({})


def test_strip_prefixes():
    out = strip_prefixes({"module._orig_mod.a.w": 1, "_orig_mod.module.b": 2, "c.module.x": 3})
    assert out == {"a.w": 1, "b": 2, "c.module.x": 3}


def test_strict_loader_names_missing_unexpected_and_mismatched_keys():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    del sd["1.bias"]
    sd["2.weight"] = torch.zeros(1)
    sd["0.weight"] = torch.zeros(5, 3)
    with pytest.raises(CheckpointError) as info:
        load_state_dict_strict(model, sd, source="bad.pt", context="tiny config")
    msg = str(info.value)
    assert "bad.pt" in msg and "tiny config" in msg
    assert "missing keys (1): 1.bias" in msg
    assert "unexpected keys (1): 2.weight" in msg
    assert "0.weight: checkpoint (5, 3) vs model (4, 3)" in msg


def test_strict_loader_loads_matching_weights():
    model = torch.nn.Linear(3, 2)
    sd = {"weight": torch.full((2, 3), 0.25), "bias": torch.tensor([1.0, -1.0])}
    load_state_dict_strict(model, sd)
    torch.testing.assert_close(model.weight.data, sd["weight"])
    torch.testing.assert_close(model.bias.data, sd["bias"])


def test_save_atomic_gives_new_files_the_usual_permissions(tmp_path):
    import stat

    mask = os.umask(0o022)
    try:
        path = save_atomic({"x": torch.zeros(1)}, tmp_path / "perm.pt")
    finally:
        os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # not mkstemp's 0600


def test_prune_step_checkpoints_is_the_original_retention_rule(tmp_path):
    from utils.checkpoint import list_step_checkpoints, prune_step_checkpoints

    for s in range(10, 200, 10):
        (tmp_path / f"{s:07d}.pt").write_bytes(b"x")
    (tmp_path / ".0000200.pt.abc.tmp").write_bytes(b"partial")  # an interrupted write is never a checkpoint
    assert [s for s, _ in list_step_checkpoints(tmp_path)] == list(range(10, 200, 10))
    removed = prune_step_checkpoints(tmp_path, milestone_step=50, milestone_start=50, max_milestone_num=2,
                                     max_none_milestone_num=3)
    kept = [s for s, _ in list_step_checkpoints(tmp_path)]
    assert kept == [100, 150, 170, 180, 190]
    assert sorted(int(p.stem) for p in removed) == sorted(set(range(10, 200, 10)) - set(kept))
    assert prune_step_checkpoints(tmp_path, 50, 50, 0, -1) == [] and len(list_step_checkpoints(tmp_path)) == 5
    assert list_step_checkpoints(tmp_path / "missing") == []


class PickledThing:  # module level: pickle must find it
    pass


def test_unreadable_files_say_why_without_unsafe_advice(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(bytes(range(256)) * 8)
    with pytest.raises(CheckpointError, match="junk.pt.*not a readable PyTorch or safetensors checkpoint") as info:
        load_checkpoint_file(junk)
    assert "weights_only" not in str(info.value)

    pickled = tmp_path / "custom.pt"
    torch.save({"thing": PickledThing()}, pickled)
    with pytest.raises(CheckpointError, match=r"pickles the Python type .*PickledThing") as info:
        load_checkpoint_file(pickled)
    assert "weights_only" not in str(info.value)


# ----- stored model descriptions (format_version) ----------------------------------------------------------------

def test_model_description_of_each_format_version(tmp_path):
    import argparse

    from utils.checkpoint import FORMAT_VERSION, read_model_description

    gpt_config = {"gpt_model": "GPT-tiny", "vocab_size": 64, "block_size": 16, "num_classes": 10}
    weights = {"w": torch.zeros(2)}
    v0 = save_atomic({"model": weights, "gpt_config": gpt_config, "args": {"tok_config": "t.yaml"}}, tmp_path / "a.pt")
    found = read_model_description(v0)
    assert (found.kind, found.config, found.format_version, found.partial) == ("gpt", gpt_config, 0, False)
    assert found.train_args == {"tok_config": "t.yaml"} and found.tokenizer_config is None
    v1 = save_atomic({"model": weights, "gpt_config": gpt_config, "format_version": 1,
                      "tokenizer_config": {"model": {"model_cls": "VQVitModelPlus"}}}, tmp_path / "b.pt")
    found = read_model_description(v1)
    assert found.format_version == 1 and found.tokenizer_config == {"model": {"model_cls": "VQVitModelPlus"}}
    tok = save_atomic({"model": weights, "config": {"model": {"model_cls": "X"}}, "format_version": 1,
                       "args": argparse.Namespace(lr=1.0)}, tmp_path / "c.pt")
    found = read_model_description(tok)
    assert (found.kind, found.config, found.train_args) == ("tokenizer", {"model": {"model_cls": "X"}}, {"lr": 1.0})
    # the original's GPT checkpoints: only argparse settings, read as a partial description
    orig = save_atomic({"model": weights, "args": argparse.Namespace(gpt_model="GPT-B", qk_norm=False, lr=1.0)},
                       tmp_path / "d.pt")
    found = read_model_description(orig)
    assert found.partial and found.config == {"gpt_model": "GPT-B", "use_qk_norm": False}
    for bare in (save_atomic(weights, tmp_path / "e.pt"), save_atomic({"model": weights}, tmp_path / "f.pt")):
        found = read_model_description(bare)
        assert found.kind is None and found.config is None and found.format_version == 0
    newer = save_atomic({"model": weights, "format_version": FORMAT_VERSION + 1}, tmp_path / "g.pt")
    with pytest.raises(CheckpointError, match=f"format_version {FORMAT_VERSION + 1}; this gigatok reads versions up "
                                              f"to {FORMAT_VERSION}"):
        read_model_description(newer)


def test_save_pretrained_folders_record_their_version(tmp_path):
    from safetensors.torch import save_file

    from utils.checkpoint import read_model_description

    from testlib import tiny_gpt

    folder = tiny_gpt().save_pretrained(tmp_path / "gpt")
    found = read_model_description(folder)
    assert (found.kind, found.format_version, found.config["gpt_model"]) == ("gpt", 1, "GPT-tiny")
    assert read_model_description(folder / "model.safetensors").config == found.config
    # a folder written before format_version existed: no version in the weights' header
    save_file({"w": torch.zeros(2)}, str(folder / "model.safetensors"), metadata={"format": "pt"})
    assert read_model_description(folder).format_version == 0


def test_settle_flags_fills_checks_and_names_every_contradiction():
    import argparse

    from utils.checkpoint import settle_flags
    from utils.config import ConfigError

    flags = [("--size", "size", "size", 3), ("--deep", "deep", "deep", False), ("--name", "name", "name", "x")]
    args = argparse.Namespace(size=None, deep=None, name=None)
    assert settle_flags(args, {"size": 5, "deep": True}, flags, "ck.pt") == ["--size", "--deep"]
    assert (args.size, args.deep, args.name) == (5, True, "x")  # stored values, else the default
    args = argparse.Namespace(size=5, deep=None, name="y")
    settle_flags(args, {"size": 5, "deep": False}, flags, "ck.pt")  # agreeing flags; name not stored: the flag's
    assert (args.size, args.deep, args.name) == (5, False, "y")
    args = argparse.Namespace(size=4, deep=True, name=None)
    with pytest.raises(ConfigError, match=r"ck.pt describes its model, and these flags contradict it: --size 4 \(the "
                                          r"checkpoint has size=5\); --deep True \(the checkpoint has deep=1\)"):
        settle_flags(args, {"size": 5, "deep": 1}, flags, "ck.pt")  # a bool flag never equals a count
    args = argparse.Namespace(size=None, deep=None, name=None)
    settle_flags(args, None, flags, "released.pt")  # nothing stored: the defaults, as before
    assert (args.size, args.deep, args.name) == (3, False, "x")
