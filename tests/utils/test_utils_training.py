"""utils.training, the kit under the trainer base: shared settings and flags, precision names, exit codes, state
round trips, parameter groups."""
from __future__ import annotations

import argparse
import importlib.util

import pytest
import torch

from utils import training
from utils.checkpoint import CheckpointError, load_checkpoint_file
from utils.config import ConfigError
from utils.ema import EMA
from utils.settings import add_flags, resolve
from utils.train_data import data_order_changes


def _settings(argv: list[str]) -> training.TrainSettings:
    parser = argparse.ArgumentParser()
    add_flags(parser, training.TrainSettings)
    return resolve(training.TrainSettings, parser.parse_args(argv))


@pytest.mark.parametrize("argv,project", [([], None), (["--wandb"], "default_project"),
                                          (["--wandb-project", "mine"], "mine"),
                                          (["--wandb-project", "mine", "--no-wandb"], None),
                                          (["--no-wandb"], None)])
def test_wandb_is_on_with_the_flag_or_a_named_project(argv, project):
    assert training.wandb_project(_settings(argv), "default_project") == project


def test_one_spelling_per_switch_with_the_original_aliases():
    settings = _settings([])
    assert settings.auto_resume is True and settings.max_milestone_num == 30 and settings.compile is None
    assert settings.mixed_precision == "bf16" and settings.data_parallel == "ddp" and settings.tf32
    settings = _settings(["--no-auto-resume", "--no-compile", "--precision", "fp16", "--data-parallel", "sdp",
                          "--no-tf32", "--results-dir", "out", "--exp-name", "run", "--max-steps", "7"])
    assert settings.auto_resume is False and settings.compile is False and settings.mixed_precision == "fp16"
    assert not settings.tf32 and settings.save_path == "out" and settings.exp_name == "run"
    assert settings.iterations == 7 and _settings(["--mixed-precision", "none", "--compile"]).compile is True
    assert _settings(["--early-stop-iter", "None"]).early_stop_iter is None


def test_parameter_groups_leave_out_an_empty_no_decay_group():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))
    groups = training.param_groups(model, 0.1, lambda name, _: name.startswith("1."))
    assert [len(g["params"]) for g in groups] == [2, 2] and [g["weight_decay"] for g in groups] == [0.1, 0.0]
    assert len(training.param_groups(model, 0.1, lambda *_: False)) == 1


def test_precision_names():
    assert training.autocast_dtype("none") is None and training.autocast_dtype("fp32") is None
    assert training.autocast_dtype("bf16") == torch.bfloat16 and training.storage_dtype("none") == torch.float32
    assert training.storage_dtype("fp16") == torch.float16
    with pytest.raises(ConfigError, match="'fp8'"):
        training.autocast_dtype("fp8")


def test_fsdp_needs_a_process_group_and_a_known_mode():
    assert not training.uses_fsdp("fsdp")  # no process group in this test process: unsharded
    assert not training.uses_fsdp("ddp")
    with pytest.raises(ConfigError, match="zero3"):
        training.uses_fsdp("zero3")


def test_no_sync_and_weights_finite_on_a_plain_module():
    model = torch.nn.Linear(3, 2)
    with training.no_sync(model, model, fsdp=False, last=False):
        model(torch.ones(1, 3)).sum().backward()
    assert model.weight.grad is not None
    assert training.weights_finite(model, torch.device("cpu"))
    with torch.no_grad():
        model.bias[1] = float("nan")
    assert not training.weights_finite(model, torch.device("cpu"))


def test_full_state_round_trip_keyed_by_name():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(torch.randn(5, 4)).sum().backward()
    opt.step()
    model_sd, optim_sd = training.full_state_dicts(model, opt)
    assert set(optim_sd["state"]) == {"0.weight", "0.bias", "1.weight", "1.bias"}
    other = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 1))
    other_opt = torch.optim.AdamW(other.parameters(), lr=1e-2)
    training.load_model_state(other, model_sd, fsdp=False, source="mem")
    training.load_optimizer_state(other, other_opt, optim_sd)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), other.state_dict().values(),
                                                 strict=True))
    ours = opt.state_dict()["state"]
    theirs = other_opt.state_dict()["state"]
    assert all(torch.equal(ours[i]["exp_avg"], theirs[i]["exp_avg"]) for i in ours)
    with pytest.raises(CheckpointError, match="2.bias"):
        training.load_model_state(other, {**model_sd, "2.bias": torch.zeros(1)}, fsdp=True, source="mem")


def test_full_checkpoint_file_and_a_weights_only_start_from_it(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ema = EMA(model, decay=0.5)
    model(torch.randn(5, 4)).sum().backward()
    opt.step()
    ema.update(model)
    path = tmp_path / "0000001.pt"
    training.save_full_checkpoint(path, {"steps": 1}, model, opt, ema, is_main=True)
    ckpt = load_checkpoint_file(path)
    assert ckpt["steps"] == 1 and set(ckpt["optimizer"]["state"]) == {"0.weight", "0.bias", "1.weight", "1.bias"}
    assert all(torch.equal(ckpt["model"][k], v) for k, v in model.state_dict().items())
    assert not torch.equal(ckpt["ema"]["0.weight"], ckpt["model"]["0.weight"])  # the average, not the weights
    training.save_full_checkpoint(tmp_path / "other.pt", {}, model, opt, ema, is_main=False)
    assert not (tmp_path / "other.pt").exists()  # only rank 0 writes

    # a fine-tune takes the first listed entry present (here the EMA) through ``adapt``, also as its own EMA
    other = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 1))
    other_ema = EMA(other)
    adapted = []
    training.load_weights_only(ckpt, path, ("ema", "model"), other, other_ema, fsdp=False,
                               adapt=lambda weights: adapted.append(sorted(weights)) or weights)
    assert adapted == [sorted(ckpt["ema"])]
    assert all(torch.equal(other.state_dict()[k], v) for k, v in ckpt["ema"].items())
    assert all(torch.equal(other_ema.shadow[k], v) for k, v in ckpt["ema"].items())


def test_data_order_changes_name_what_moved_since_the_checkpoint():
    stored = {"dataset_len": 100, "global_batch_size": 8, "seed": 0, "world_size": 2}
    assert data_order_changes(stored, 100, 8, 0) == []
    assert data_order_changes(stored, 120, 8, 1) == ["dataset_len 100 -> 120", "seed 0 -> 1"]
    assert data_order_changes({}, 120, 16, 1) == []  # an older checkpoint without the record: nothing to compare


def _raiser(exc):
    def main(argv=None):
        raise exc
    return main


@pytest.mark.parametrize("exc,code,text", [
    (ConfigError("trainer.lr: bad value"), 2, "[prog] error: trainer.lr: bad value"),
    (CheckpointError("x.pt is not a checkpoint"), 2, "[prog] error: x.pt is not a checkpoint"),
    (ValueError("class ids [12] are outside [0, 10)"), 2, "[prog] error: class ids [12] are outside [0, 10)"),
    (training.TrainingDiverged("non-finite loss at step 3"), 3, "[prog] training stopped: non-finite loss at step 3"),
    (OSError(13, "Permission denied", "/ro/out.txt"), 4,
     "[prog] error: permission denied: /ro/out.txt (PermissionError)")])
def test_cli_turns_project_errors_into_one_line_and_an_exit_code(exc, code, text, capsys, monkeypatch):
    from utils.cli import run_cli

    monkeypatch.delenv("GIGATOK_DEBUG", raising=False)
    with pytest.raises(SystemExit) as info:
        run_cli(_raiser(exc), "prog", [])
    assert info.value.code == code
    assert capsys.readouterr().err.strip() == text
    with pytest.raises(type(exc)):  # --debug (or GIGATOK_DEBUG=1): the traceback
        run_cli(_raiser(exc), "prog", ["--debug"])
    monkeypatch.setenv("GIGATOK_DEBUG", "1")
    with pytest.raises(type(exc)):
        run_cli(_raiser(exc), "prog", [])


def test_disk_full_inside_torch_save_is_an_io_error(tmp_path, capsys, monkeypatch):
    """torch.save reports a full disk as a RuntimeError whose cause holds the errno: exit 4, one line."""
    from utils.checkpoint import save_atomic
    from utils.cli import run_cli

    def full(*args, **kwargs):
        try:
            raise OSError(28, "No space left on device")
        except OSError as cause:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0") from cause
    monkeypatch.setattr(torch, "save", full)
    monkeypatch.delenv("GIGATOK_DEBUG", raising=False)

    def main(argv):
        save_atomic({"w": torch.zeros(2)}, tmp_path / "ckpt.pt")
    with pytest.raises(SystemExit) as info:
        run_cli(main, "prog", [])
    assert info.value.code == 4
    assert capsys.readouterr().err.strip() == "[prog] error: no space left on device (RuntimeError)"
    assert list(tmp_path.iterdir()) == []  # nothing half written


def test_an_unexpected_exception_keeps_its_traceback():
    from utils.cli import run_cli

    with pytest.raises(KeyError):
        run_cli(_raiser(KeyError("bug")), "prog", [])


def test_run_trainer_closes_and_logs_the_error():
    events = []

    class Fake:
        def build(self):
            events.append("build")

        def train(self):
            raise ConfigError("bad key")

        def log(self, msg):
            events.append(msg)

        def close(self):
            events.append("close")

    with pytest.raises(ConfigError):
        training.run_trainer(Fake())
    assert events == ["build", "ERROR: bad key", "close"]


def test_gigatok_command_lists_and_runs_the_jobs(capsys):
    from utils.cli import JOBS, gigatok_main

    with pytest.raises(SystemExit) as info:
        gigatok_main(["--help"])
    assert info.value.code == 0
    listing = capsys.readouterr().out
    assert all(name in listing and module in listing for name, (module, _) in JOBS.items())
    with pytest.raises(SystemExit, match="unknown job 'sampel'; did you mean sample"):
        gigatok_main(["sampel"])
    gigatok_main(["reproduce", "list"])  # = python -m autoregressive.reproduce list
    assert "gfid/GPT-B_VQ_XLXXL" in capsys.readouterr().out
    for module, _ in JOBS.values():  # every job names a real driver with a command-line entry
        assert importlib.util.find_spec(module) is not None, module
