"""benchmarks/device_check.sh: the whole chain runs end to end on CPU (--quick), a failing part is reported while the
others still run, and the report fills README's GPU section."""
from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET

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


def without_browser_env(tmp_path) -> dict:
    """A user's machine as far as the browser test can tell: no chromium / chromedriver on PATH (an empty folder;
    the interpreter is started by its full path) and no GIGATOK_REQUIRE_BROWSER (which CI sets)."""
    (tmp_path / "bin").mkdir(exist_ok=True)
    env = child_env(PATH=str(tmp_path / "bin"))
    env.pop("GIGATOK_REQUIRE_BROWSER", None)
    return env


def test_without_chromium_the_cuda_part_sees_only_cuda_skips_and_the_browser_test_skips(tmp_path):
    """The README's test command on a machine without Chromium (CI installs it, so the suite there cannot show
    this): the device check's `pytest -m cuda` run must not report the browser module (its skip has no CUDA reason),
    and a plain run skips the browser test with its reason instead of failing."""
    env = without_browser_env(tmp_path)
    browser, cuda = "tests/autoregressive/test_demo_browser.py", "tests/test_cuda.py"
    junit = tmp_path / "junit.xml"
    # the selection device_check's tests part makes (benchmarks/device_check.py part_tests)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-rA", "-p", "no:cacheprovider",
                           f"--junitxml={junit}", browser, cuda], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    cases = list(ET.parse(junit).getroot().iter("testcase"))
    assert cases and not any("test_demo_browser" in f"{c.get('classname')}::{c.get('name')}" for c in cases)
    messages = [c.find("skipped").get("message") for c in cases]  # child_env hides any GPU: all skip
    assert all(m and "CUDA" in m for m in messages), messages
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", browser], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "1 skipped" in proc.stdout and "needs Debian's chromium and chromium-driver" in proc.stdout
    # CI's setting turns the missing browser into a failure, not a skip
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", browser], cwd=REPO,
                          env={**env, "GIGATOK_REQUIRE_BROWSER": "1"}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "GIGATOK_REQUIRE_BROWSER=1 (CI) but the browser test needs" in proc.stdout


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
