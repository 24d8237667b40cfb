"""evaluations/quickstart_report.py: summary.json of a quickstart run and the --check bar."""
from __future__ import annotations

import json

import pytest

from evaluations.quickstart_report import main

from testlib import REPO  # noqa: F401  (puts the repo root on sys.path)

RECON = {"num_images": 60, "psnr": 21.0, "ssim": 0.71, "rfid": 40.5, "codebook_usage": 0.25, "extra": 1}
GEN = {"num_sample_images": 100, "fid": 80.0, "sfid": 90.0, "precision": 0.4, "recall": 0.3,
       "inception_score": 2.5}
CLF = {"real_val_accuracy": 0.85, "sample_accuracy": 0.7, "chance": 0.1, "num_samples": 100}


def _inputs(tmp_path, psnr=21.0, acc=0.7):
    out = tmp_path / "run"
    out.mkdir(exist_ok=True)
    files = {}
    for name, data in (("recon", {**RECON, "psnr": psnr}), ("gen", GEN), ("clf", {**CLF, "sample_accuracy": acc})):
        files[name] = tmp_path / f"{name}.json"
        files[name].write_text(json.dumps(data))
    args = ["--out-dir", str(out), "--recon-metrics", str(files["recon"]), "--gen-metrics", str(files["gen"]),
            "--classifier", str(files["clf"])]
    return out, args, files


def test_summary_json_holds_the_values(tmp_path):
    out, args, _ = _inputs(tmp_path, psnr=15.0)
    (out / "reconstruction" / "val").mkdir(parents=True)
    (out / "reconstruction" / "val" / "grid.png").write_bytes(b"x")
    assert main(args + ["--samples-npz", "s.npz", "--seconds", "120"]) == 0  # below the bar but no --check
    s = json.loads((out / "summary.json").read_text())
    assert s["reconstruction"] == {k: RECON[k] for k in ("num_images", "ssim", "rfid", "codebook_usage")} | {
        "psnr": 15.0}
    assert s["generation"] == {"num_samples": 100, "fid": 80.0, "sfid": 90.0, "precision": 0.4, "recall": 0.3,
                               "inception_score": 2.5}
    assert s["classifier"] == {"real_val_accuracy": 0.85, "sample_accuracy": 0.7, "chance": 0.1}
    assert s["pictures"]["reconstructions"] == str(out / "reconstruction" / "val" / "grid.png")
    assert s["pictures"]["class_grid"] is None
    assert s["pictures"]["samples_npz"] == "s.npz"
    assert s["pictures"]["tokenizer_curves"] is None and s["pictures"]["gpt_curves"] is None
    assert s["seconds"] == 120.0
    assert s["check"]["min_psnr"] == 18.0 and s["check"]["min_accuracy"] == 0.5
    assert len(s["check"]["failures"]) == 1 and "PSNR" in s["check"]["failures"][0]


def test_check_fails_on_low_psnr(tmp_path, capsys):
    _, args, _ = _inputs(tmp_path, psnr=15.0, acc=0.7)
    assert main(args + ["--check"]) == 1
    assert "BELOW THE BAR" in capsys.readouterr().err


def test_check_fails_on_low_accuracy(tmp_path):
    out, args, _ = _inputs(tmp_path, psnr=21.0, acc=0.4)
    assert main(args + ["--check"]) == 1
    failures = json.loads((out / "summary.json").read_text())["check"]["failures"]
    assert len(failures) == 1 and "accuracy" in failures[0]


def test_check_passes(tmp_path, capsys):
    out, args, _ = _inputs(tmp_path, psnr=21.0, acc=0.7)
    assert main(args + ["--check"]) == 0
    captured = capsys.readouterr()
    assert "BELOW THE BAR" not in captured.err
    assert "21.00" in captured.out
    assert json.loads((out / "summary.json").read_text())["check"]["failures"] == []


def test_check_thresholds_are_configurable(tmp_path):
    _, args, _ = _inputs(tmp_path, psnr=21.0, acc=0.7)
    assert main(args + ["--check", "--min-psnr", "25"]) == 1
    assert main(args + ["--check", "--min-accuracy", "0.75"]) == 1
    assert main(args + ["--check", "--min-psnr", "20", "--min-accuracy", "0.6"]) == 0


def test_missing_metric_counts_as_failure(tmp_path):
    out, args, files = _inputs(tmp_path)
    files["recon"].write_text(json.dumps({"num_images": 3}))
    assert main(args + ["--check"]) == 1
    s = json.loads((out / "summary.json").read_text())
    assert s["reconstruction"]["psnr"] is None


@pytest.mark.parametrize("which", ["recon", "gen", "clf"])
def test_missing_input_file_names_it(tmp_path, which):
    _, args, files = _inputs(tmp_path)
    files[which].unlink()
    with pytest.raises(SystemExit) as info:
        main(args)
    assert str(files[which]) in str(info.value.code)


def test_summary_prints_where_the_curves_are(tmp_path, capsys):
    out, args, _ = _inputs(tmp_path)
    assert main(args) == 0
    assert "curves     none drawn" in capsys.readouterr().out
    for part in ("tokenizer/VQ_tiny32_2d", "gpt/GPT-tiny"):
        (out / part).mkdir(parents=True)
        (out / part / "curves.png").write_bytes(b"x")
    assert main(args) == 0
    printed = capsys.readouterr().out
    tok, gpt = out / "tokenizer/VQ_tiny32_2d/curves.png", out / "gpt/GPT-tiny/curves.png"
    assert f"curves     training curves: {tok}  {gpt}" in printed
    pictures = json.loads((out / "summary.json").read_text())["pictures"]
    assert pictures["tokenizer_curves"] == str(tok) and pictures["gpt_curves"] == str(gpt)
