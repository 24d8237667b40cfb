"""benchmarks/device_check.sh: the whole chain runs end to end on CPU (--quick), a failing part is reported while the
others still run, and the report fills README's GPU section."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from testlib import REPO, child_env

sys.path.insert(0, str(REPO / "benchmarks"))
import device_check  # noqa: E402


def run_check(tmp_path, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path / "device_check.json"
    env = child_env(OMP_NUM_THREADS="2")
    proc = subprocess.run(["bash", "benchmarks/device_check.sh", "--out", str(out), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)
    return proc, json.loads(out.read_text())


@pytest.mark.slow
def test_quick_chain_on_cpu_runs_every_part(tmp_path):
    proc, report = run_check(tmp_path, "--device", "cpu", "--quick")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert report["order"] == list(device_check.PARTS) and report["quick"] is True
    parts = report["parts"]
    assert all(parts[name]["ok"] for name in device_check.PARTS), {k: v.get("error") for k, v in parts.items()}
    # the cuda tests are collected and skip with their reason on a machine without CUDA
    tests = parts["tests"]["result"]
    assert tests["counts"].get("skipped", 0) >= 10 and not tests["counts"].get("passed")
    assert all("CUDA" in msg for msg in tests["messages"].values())
    rows = parts["sampling"]["result"]["runs"][0]["rows"]
    assert {r["mode"] for r in rows} == {"eager", "static", "static-native-fused"}
    assert {r["batch"] for r in rows} == {1, 4}
    assert all(r["tokens_per_s"] > 0 and 0 < r["fraction_of_floor"] for r in rows)
    assert parts["precision"]["result"]["VQ_SS256/fp32"]["cont_feat_rel_err"] < 1e-4
    assert parts["tokenizer"]["result"]["runs"][0]["encode_images_per_s"] > 0
    assert parts["train_gpt"]["result"]["tokens_per_s"] > 0 and parts["inception"]["result"]["inception_images_per_s"]
    assert "device check: cpu" in proc.stdout and "wrote" in proc.stdout

    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n## GPU\n\n{device_check.BEGIN}\nold\n{device_check.END}\n\nafter\n")
    device_check.render_readme(report, readme)
    text = readme.read_text()
    assert "old" not in text and "| sampling | ok |" in text and "| GPT-tiny fp32 | 4 | static |" in text
    assert text.endswith("after\n")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the report of a part failing for want of CUDA")
def test_a_failing_part_is_reported_and_the_others_still_run(tmp_path):
    proc, report = run_check(tmp_path, "--device", "cuda", "--parts", "env", "tests")
    assert proc.returncode == 1
    env, tests = report["parts"]["env"], report["parts"]["tests"]
    assert not env["ok"] and "CUDA is not available" in env["error"]
    assert tests["ok"] and tests["result"]["counts"].get("skipped", 0) >= 10
    assert "env        FAILED" in proc.stdout and "tests      ok" in proc.stdout


def test_budget_skips_parts_not_started(tmp_path):
    proc, report = run_check(tmp_path, "--device", "cpu", "--quick", "--parts", "env", "inception", "--budget", "0")
    assert proc.returncode == 1
    assert all(not r["ok"] and "--budget" in r["error"] for r in report["parts"].values())
