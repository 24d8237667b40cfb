"""The sampling driver: class grids, the gFID npz (independent of batch split), settings, and bad input."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from autoregressive import GPT_models
from autoregressive.sample_c2i import main as sample
from autoregressive.sample_c2i import parse_args
from tokenizer import build_tokenizer
from utils import cpu_kernels
from utils.checkpoint import CheckpointError, save_atomic

from testlib import CONFIGS

TINY = CONFIGS / "VQ_tiny32.yaml"


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("sample")
    torch.manual_seed(11)
    save_atomic({"model": build_tokenizer(TINY).state_dict()}, root / "tok.pt")
    gpt = GPT_models["GPT-tiny"](vocab_size=1024, block_size=64, num_classes=10)
    save_atomic({"model": gpt.state_dict(), "steps": 0}, root / "gpt.pt")
    bad = GPT_models["GPT-tiny"](vocab_size=512, block_size=64, num_classes=10)
    save_atomic({"model": bad.state_dict()}, root / "gpt_other_vocab.pt")
    return root


def _common(root, out, *extra):
    return ["--vq-ckpt", str(root / "tok.pt"), "--tok-config", str(TINY), "--gpt-model", "GPT-tiny",
            "--gpt-ckpt", str(root / "gpt.pt"), "--num-classes", "10", "--precision", "none", "--device", "cpu",
            "--sample-dir", str(out), "--cfg-scale", "2.0", "--top-k", "50", *extra]


def test_visualize_writes_grids_and_settings(ckpts, tmp_path):
    folder = sample(_common(ckpts, tmp_path, "--mode", "visualize", "--class-idx", "3,7", "--qual-num", "4",
                            "--per-proc-batch-size", "3", "--device", "auto"))
    assert (folder / "multi_class_grid.png").is_file()
    assert (folder / "class_3_grid.png").is_file() and (folder / "class_7_grid.png").is_file()
    pngs = sorted(folder.rglob("class3_*.png")) + sorted(folder.rglob("class7_*.png"))
    assert len(pngs) == 4
    settings = json.loads((folder / "sample_settings.json").read_text())
    assert settings["cfg_scale"] == 2.0 and settings["world_size"] == 1
    identity = settings["run_inputs"]["gpt_ckpt"]  # size, mtime and a partial hash, not a whole-file sha256
    assert len(identity["partial_sha256"]) == 64 and identity["size"] > 0
    from utils.distributed import pick_device
    assert settings["device"] == str(pick_device("auto")) != "auto"  # the device used, not the request


def test_visualize_class_names_with_slashes_make_safe_file_names(ckpts, tmp_path):
    names = tmp_path / "names.txt"
    names.write_text("".join(f"{n}\n" for n in ["T-shirt/top", "Trouser", "a b, c", *[f"n{i}" for i in range(7)]]))
    folder = sample(_common(ckpts, tmp_path / "out", "--mode", "visualize", "--class-idx", "0,2", "--qual-num", "2",
                            "--class-names", str(names)))
    assert (folder / "class_0_T-shirt_top" / "T-shirt_top_000000.png").is_file()
    assert (folder / "class_2_a_b" / "a_b_000000.png").is_file()
    assert (folder / "multi_class_grid.png").is_file()


def test_fid_npz_is_independent_of_batch_size(ckpts, tmp_path):
    sample(_common(ckpts, tmp_path / "a", "--mode", "fid", "--num-fid-samples", "6", "--per-proc-batch-size", "4"))
    sample(_common(ckpts, tmp_path / "b", "--mode", "fid", "--num-fid-samples", "6", "--per-proc-batch-size", "1"))
    a = np.load(next((tmp_path / "a").glob("*.npz")))
    b = np.load(next((tmp_path / "b").glob("*.npz")))
    assert a["arr_0"].shape == (6, 32, 32, 3) and a["arr_0"].dtype == np.uint8
    assert np.array_equal(a["labels"], b["labels"]) and a["labels"].min() >= 0 and a["labels"].max() < 10
    # the tokens are identical; decoding in other batch shapes may move a pixel by one uint8 step
    assert np.array_equal(a["codes"], b["codes"]) and a["codes"].shape == (6, 64)
    assert np.abs(a["arr_0"].astype(int) - b["arr_0"].astype(int)).max() <= 1


def test_static_decoding_gives_the_eager_samples_and_shares_their_key(ckpts, tmp_path):
    """--engine auto (the static decoder, the default) == --engine eager, token for token, so both use the same
    folder; an engine that can change tokens (fused attention, packed kernels) gets its own run key."""
    args = ("--mode", "fid", "--num-fid-samples", "5", "--per-proc-batch-size", "4")
    sample(_common(ckpts, tmp_path / "s", *args))
    sample(_common(ckpts, tmp_path / "e", *args, "--engine", "eager"))
    sample(_common(ckpts, tmp_path / "f", *args, "--engine", "static-fused"))
    (s,), (e,), (f,) = ([p.name for p in (tmp_path / d).glob("*.npz")] for d in "sef")
    assert s == e and s != f
    a, b = np.load(tmp_path / "s" / s), np.load(tmp_path / "e" / e)
    assert np.array_equal(a["codes"], b["codes"])
    settings = json.loads(next((tmp_path / "s").rglob("sample_settings.json")).read_text())
    assert settings["engine"] == "auto" and settings["decode"] == "static" and settings["attention"] == "math"
    sample(_common(ckpts, tmp_path / "p", *args, "--engine", "auto+packed"))  # native where it builds
    sample(_common(ckpts, tmp_path / "o", *args, "--engine", "auto+onednn"))
    (p,), (o,) = ([q.name for q in (tmp_path / d).glob("*.npz")] for d in "po")
    assert len({p, o, s, f}) == 4  # each kernel its own key
    for d, name in (("p", p), ("o", o)):
        assert np.array_equal(np.load(tmp_path / d / name)["codes"], a["codes"])
    packed = json.loads(next((tmp_path / "p").rglob("sample_settings.json")).read_text())
    assert packed["cpu_prepack"] == "auto" and packed["run_inputs"]["decode"] == "auto/math/cpu-prepack-" + (
        "native" if cpu_kernels.available() else "onednn")
    with pytest.raises(ValueError, match="eager loop takes no modifiers"):
        sample(_common(ckpts, tmp_path / "x", *args, "--engine", "eager+packed"))


def test_old_decode_flags_are_hidden_aliases_of_the_engine(ckpts, tmp_path, capsys):
    """--decode / --attention / --cpu-prepack / --decode-compile / --compile still work for one release: mapped
    onto --engine (same folder as the new spelling), one deprecation note, absent from --help."""
    from autoregressive.engine import parse_engine
    args = ("--mode", "fid", "--num-fid-samples", "2", "--per-proc-batch-size", "2")
    sample(_common(ckpts, tmp_path / "n", *args, "--engine", "static-fused"))
    capsys.readouterr()
    sample(_common(ckpts, tmp_path / "o", *args, "--attention", "fused"))
    err = capsys.readouterr().err
    assert err.count("deprecated spellings of --engine") == 1 and "--engine auto+fused" in err
    (new,), (old,) = ([q.name for q in (tmp_path / d).glob("*.npz")] for d in "no")
    assert new == old
    with pytest.raises(ValueError, match="--cpu-prepack.*--decode static"):
        sample(_common(ckpts, tmp_path / "x", *args, "--decode", "eager", "--cpu-prepack"))
    with pytest.raises(SystemExit):
        sample(["--help"])
    shown = capsys.readouterr().out
    assert "--engine" in shown and all(f not in shown for f in ("--decode", "--attention", "--cpu-prepack"))
    for name in ("auto", "eager", "static", "cudagraph", "compile", "inductor", "inductor-cudagraph",
                 "auto+fused+native", "cpu-fast"):
        assert parse_engine(parse_engine(name).name) == parse_engine(name)  # the recorded name parses back
    with pytest.raises(ValueError, match="unknown engine"):
        parse_engine("static+turbo")


def test_help_fits_one_screen_with_the_advanced_flags_in_its_epilog(capsys):
    with pytest.raises(SystemExit):
        sample(["--help"])
    shown = capsys.readouterr().out
    options, epilog = shown.split("\nadvanced:\n")
    listed = set(re.findall(r"^  (--[a-z0-9-]+)", options, flags=re.M))
    assert "--engine" in listed and "--cfg-scale" in listed and len(listed) <= 25, sorted(listed)
    for flag in ("--no-tf32", "--image-size-eval", "--fid-method", "--cfg-scale-start", "--clear-cache"):
        assert flag not in listed and f"\n  {flag}  " in f"\n{epilog}"
    assert parse_args(["--gpt-ckpt", "g", "--vq-ckpt", "v", "--fid-method", "eigh"]).fid_method == "eigh"


def test_bad_class_id_and_wrong_tokenizer_are_clear_errors(ckpts, tmp_path):
    with pytest.raises(ValueError, match=r"class ids \[12\] are outside \[0, 10\)"):
        sample(_common(ckpts, tmp_path, "--class-idx", "3,12"))
    args = _common(ckpts, tmp_path, "--class-idx", "1")
    args[args.index(str(ckpts / "gpt.pt"))] = str(ckpts / "gpt_other_vocab.pt")
    with pytest.raises(CheckpointError, match="vocabulary 1024"):
        sample(args)


def test_search_rejects_an_unsearchable_schedule_before_loading(ckpts, tmp_path):
    from utils.config import ConfigError

    with pytest.raises(ConfigError, match="'linear'"):
        sample(_common(ckpts, tmp_path, "--mode", "fid", "--search", "--cfg-schedule", "linear",
                       "--gt-npz-path", str(tmp_path / "ref.npz")))


def test_search_draws_fid_and_is_against_the_scale_beside_its_csv(ckpts, tmp_path, monkeypatch):
    """The walk itself is tested in test_cfg_search.py; here the sampling is replaced by an FID parabola so the
    search's plot (redrawn after every scale) can be checked without Inception."""
    pytest.importorskip("matplotlib", reason="the plot extra (env_install.sh --test has it)")
    import types

    from autoregressive import cfg_search
    from autoregressive import sample_search as ss
    from autoregressive.sample_c2i import parse_args
    from autoregressive.sample_fid import csv_path

    evaluated = []

    def fake_sample_fid(args, sampler, dist, scale, kwargs):
        metrics = {"FID": (scale - 2.0) ** 2 + 3.0, "Inception Score": 50 * scale, "Precision": 0.7,
                   "Recall": 0.5, "sFID": 6.0}
        cfg_search.record(csv_path(args), args.cfg_schedule, cfg_search.annotation(kwargs), scale, metrics)
        evaluated.append((scale, csv_path(args).with_name(csv_path(args).stem + ".cfg_search.png").is_file()))
        return metrics

    monkeypatch.setattr(ss, "sample_fid", fake_sample_fid)  # the search job's view of the fid job
    args = parse_args(_common(ckpts, tmp_path / "samples", "--mode", "fid", "--search", "--cfg-schedule", "step",
                                 "--gt-npz-path", str(tmp_path / "ref.npz"), "--cfg-scale-start", "1.5"))
    result = ss.search(args, sampler=None, dist=types.SimpleNamespace(is_main=True))
    assert result["best_cfg_scale"] == 2.0 and [s for s, _ in evaluated] == [1.5, 1.75, 2.0, 2.25]
    assert [drawn for _, drawn in evaluated] == [False, True, True, True]  # redrawn after every scale
    assert result["plot"] == str(csv_path(args).with_name(csv_path(args).stem + ".cfg_search.png"))
    assert Path(result["plot"]).is_file()


def test_fid_folder_names_carry_the_schedule_arguments(ckpts, tmp_path):
    from autoregressive.sample_c2i import parse_args
    from autoregressive.sample_fid import fid_folder
    from autoregressive.sample_inputs import default_schedule_kwargs

    args = parse_args(_common(ckpts, tmp_path, "--cfg-schedule", "step", "--step-start-ratio", "0.3"))
    folder = fid_folder(args, 1.75, default_schedule_kwargs(args))
    assert re.search(r"-cfg-1\.75-step-window_start-0\.30-[0-9a-f]{8}-seed-0$", folder.name), folder.name
    other = fid_folder(args, 1.75, {"window_start": 0.1, "window_end": 0.5})
    assert other != folder and "window_end-0.50" in other.name


def test_results_of_other_checkpoints_never_collide(ckpts, tmp_path):
    """Another --gpt-ckpt (or sample count) into the same --sample-dir writes beside the first result."""
    torch.manual_seed(12)
    other = GPT_models["GPT-tiny"](vocab_size=1024, block_size=64, num_classes=10)
    with torch.no_grad():  # peaked logits: its samples cannot coincide with the first GPT's near-uniform ones
        torch.nn.init.normal_(other.output.weight, std=1.0)
    save_atomic({"model": other.state_dict()}, tmp_path / "gpt_other.pt")
    sample(_common(ckpts, tmp_path / "out", "--mode", "fid", "--num-fid-samples", "4", "--per-proc-batch-size", "4"))
    args = _common(ckpts, tmp_path / "out", "--mode", "fid", "--num-fid-samples", "4", "--per-proc-batch-size", "4")
    args[args.index(str(ckpts / "gpt.pt"))] = str(tmp_path / "gpt_other.pt")
    sample(args)
    sample(_common(ckpts, tmp_path / "out", "--mode", "fid", "--num-fid-samples", "6", "--per-proc-batch-size", "6"))
    npzs = sorted((tmp_path / "out").glob("*.npz"))
    assert len(npzs) == 3 and len({p.name for p in npzs}) == 3
    first, second = (np.load(p)["codes"] for p in npzs[:2])
    settings = [json.loads((p.with_suffix("") / "sample_settings.json").read_text()) for p in npzs]
    assert len({s["run_key"] for s in settings}) == 3
    assert {s["run_inputs"]["num_fid_samples"] for s in settings} == {4, 6}
    assert not (first.shape == second.shape and np.array_equal(first, second))


def test_out_folder_holds_the_run_and_refuses_other_inputs(ckpts, tmp_path):
    """--out names the result folder; its sample_settings.json records the inputs, and a run with other inputs into
    the same folder is refused."""
    out = tmp_path / "grid"
    folder = sample(_common(ckpts, tmp_path, "--mode", "visualize", "--class-idx", "3", "--qual-num", "2",
                            "--out", str(out)))
    assert folder == out and (out / "multi_class_grid.png").is_file() and (out / "sample_settings.json").is_file()
    sample(_common(ckpts, tmp_path, "--mode", "visualize", "--class-idx", "3", "--qual-num", "2", "--out", str(out)))
    with pytest.raises(ValueError, match="holds samples of other inputs"):
        sample(_common(ckpts, tmp_path, "--mode", "visualize", "--class-idx", "3", "--qual-num", "2",
                       "--out", str(out), "--top-k", "5"))


def test_file_identity_reads_only_the_ends(tmp_path):
    from autoregressive.sample_inputs import PARTIAL_BYTES, file_identity
    big = tmp_path / "big.bin"
    big.write_bytes(bytes(3 * PARTIAL_BYTES))
    first = file_identity(big)
    with open(big, "r+b") as fh:  # a change in the last MiB (where a zip's central directory lies) is seen
        fh.seek(-10, 2)
        fh.write(b"x")
    assert file_identity(big)["partial_sha256"] != first["partial_sha256"]
    small = tmp_path / "small.bin"
    small.write_bytes(b"abc")
    assert file_identity(small)["size"] == 3
