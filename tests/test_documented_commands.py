"""Every command in README.md and Detailed_instructions.md runs as written: each documented script or module line is
launched with GIGATOK_DRY_RUN=1 (the scripts print what they would run instead of running it) and every launched
command must parse with its driver's own argument parser; composite scripts must complete their dry run."""
from __future__ import annotations

import importlib
import re
import shlex
import subprocess

import pytest

from testlib import REPO, child_env

DOCS = ["README.md", "Detailed_instructions.md"]
FAKE_ENV = {"IMGNET_ROOT": "/data/imagenet", "VAL_PATH": "/data/val256", "RANK": "0", "ADDR": "node0",
            "GIGATOK_DRY_RUN": "1"}
NOT_DRY = {"quickstart.sh", "test.sh"}  # the README's set-up commands: CI runs them for real
# reference batches the composite scripts check before launching anything: data a user downloads or makes once
# (scripts/val.sh), stood in for by empty files where the documented command (run from a scratch folder) expects them
REFERENCE_BATCHES = ["VIRTUAL_imagenet256_labeled.npz", "results/reconstructions/img_data/val_imagenet.npz"]


def documented_commands() -> list[tuple[str, str]]:
    found = []
    for doc in DOCS:
        text = (REPO / doc).read_text()
        for block in re.findall(r"```(?:bash|shell|sh)\n(.*?)```", text, re.S):
            for line in block.replace("\\\n", " ").splitlines():
                line = line.split(" #", 1)[0].strip()
                if not line or line.startswith(("#", ". ", "source ")) or "..." in line:
                    continue
                found.append((doc, line.replace("[", "").replace("]", "")))  # optional flags must parse too
    return found


def _split(line: str) -> tuple[dict, list[str]]:
    words = shlex.split(line)
    env = {}
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):
        key, _, value = words.pop(0).partition("=")
        env[key] = value
    return env, words


def _parse(module: str, args: list[str]) -> None:
    mod = importlib.import_module(module)
    parser_entry = getattr(mod, "parse_args", None) or (lambda a: mod.build_parser().parse_args(a))
    parser_entry(args)  # SystemExit(2) on a flag the driver does not accept


COMMANDS = documented_commands()


def test_the_docs_have_commands():
    assert len(COMMANDS) >= 20


@pytest.mark.parametrize("doc,line", COMMANDS, ids=[f"{d}:{i}" for i, (d, _) in enumerate(COMMANDS)])
def test_documented_command_runs_as_written(doc, line, tmp_path):
    env, words = _split(line)
    if len(words) > 1 and words[0] in ("python", "bash") and words[1].startswith("benchmarks/"):
        # a benchmark script (the .sh wrappers run the .py of the same name): its own parser must accept the flags
        import sys
        sys.path.insert(0, str(REPO / "benchmarks"))
        name = words[1].split("/", 1)[1].rsplit(".", 1)[0]
        importlib.import_module(name).build_parser().parse_args(words[2:])
        return
    if words[:1] == ["python"]:
        assert words[1] == "-m", line
        _parse(words[2], words[3:])
        return
    assert words[0] == "bash" and words[1].startswith("scripts/"), f"{doc}: unexpected command {line!r}"
    script = words[1].rsplit("/", 1)[1]
    if script in NOT_DRY:
        assert (REPO / words[1]).is_file()
        return
    if script == "reproduce.sh":  # runs the drivers itself: check its own flags and the commands it would launch
        from autoregressive.reproduce import main as reproduce
        if words[2] != "list":
            reproduce([*words[2:], "--dry-run"])
        return
    expanded = [re.sub(r"\$(\w+)|\$\{(\w+)\}", lambda m: FAKE_ENV.get(m.group(1) or m.group(2), ""), w)
                for w in words]
    cwd = REPO
    if words[1].startswith("scripts/composite_cmd/"):  # from a folder holding the reference batches' stand-ins
        cwd, expanded[1] = tmp_path, str(REPO / words[1])
        for ref in REFERENCE_BATCHES:
            (tmp_path / ref).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / ref).write_bytes(b"")
    proc = subprocess.run(expanded, cwd=cwd, env=child_env(**{**FAKE_ENV, **env}), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, f"{doc}: {line}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    launched = [shlex.split(out[len("DRY-RUN "):]) for out in proc.stdout.splitlines() if out.startswith("DRY-RUN ")]
    assert launched, f"{doc}: {line} launched nothing"
    for module, *args in launched:
        _parse(module, args)
