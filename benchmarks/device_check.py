"""The whole GPU check in one command: CUDA tests, then the benchmarks, into one device_check.json and a short table.

    bash benchmarks/device_check.sh                       # on a CUDA machine (under 8 minutes on one H200)
    bash benchmarks/device_check.sh --device cpu --quick  # the same chain on tiny sizes (CI runs this)
    python benchmarks/device_check.py --render-readme device_check.json   # fill README's "GPU" section

Parts (each in its own process, so a failing or crashing part is reported and the others still run):

* ``env``        device, driver, torch; measured read/copy bandwidth and GEMM rate (the ceilings);
* ``tests``      ``pytest -m cuda``: parity vectors on CUDA in fp32 (TF32 off) and bf16, eager == CUDA-graph
                 decoding, bf16 tokenizer training with DDP and FSDP2 over NCCL on one process plus resume,
                 Inception and LPIPS on CUDA vs CPU (they skip, with the reason, without CUDA);
* ``precision``  bf16-autocast error of the tokenizer and of GPT-B logits against the original's fp32 vectors;
* ``tokenizer``  encode / decode images/s (VQ_SS256, VQ_BL256, VQ_XLXXL256; bf16, batch 32) and % of the GEMM rate;
* ``sampling``   GPT-B and GPT-XXL tokens/s and images/s at batch 1, 32, 256 with CFG, eager vs static-cache
                 CUDA-graph decoding, each next to its bandwidth / GEMM floor;
* ``train_gpt``  GPT-B training step tokens/s (bf16, batch 32) next to its GEMM floor;
* ``inception``  Inception features/s (FID network, random weights) and % of the fp32 GEMM rate.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import traceback
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("env", "tests", "sampling", "tokenizer", "precision", "train_gpt", "inception")
README = ROOT / "benchmarks" / "README.md"
BEGIN, END = "<!-- device-check:begin -->", "<!-- device-check:end -->"


# ----- the parts (each runs in a child process: python device_check.py --part NAME ...) -----------------------------

def _setup_paths() -> None:
    for path in (ROOT, ROOT / "benchmarks", ROOT / "tests"):
        if str(path) not in sys.path:
            sys.path.insert(0, str(path))


def part_env(args) -> dict:
    import torch
    from bench_gpt_sampling import measure_bandwidth
    from bench_tokenizer import measure_gemm_flops

    from utils.distributed import pick_device

    device = pick_device(args.device)
    out = {"device": str(device), "torch": torch.__version__, "python": platform.python_version(),
           "cpu_threads": torch.get_num_threads(), "machine": platform.machine()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        out.update(gpu=props.name, gpu_memory_GiB=round(props.total_memory / 2 ** 30, 1),
                   multiprocessors=props.multi_processor_count, cuda=torch.version.cuda,
                   capability=f"{props.major}.{props.minor}")
        try:
            smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=30)
            out["driver"] = smi.stdout.strip()
        except OSError:
            out["driver"] = None
    read, copy = measure_bandwidth(device, mbytes=64 if args.quick else 2048)
    out["read_bandwidth_GBs"], out["copy_bandwidth_GBs"] = read / 1e9, copy / 1e9
    n = 1024 if args.quick else 8192
    out["gemm_fp32_TFLOPs"] = measure_gemm_flops(device, torch.float32, n=n) / 1e12
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        out["gemm_tf32_TFLOPs"] = measure_gemm_flops(device, torch.float32, n=n) / 1e12
        out["gemm_bf16_TFLOPs"] = measure_gemm_flops(device, torch.bfloat16, n=n, reps=10) / 1e12
    return out


def part_tests(args) -> dict:
    junit = Path(args.work) / "junit_cuda.xml"
    cmd = [sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-rA", "-p", "no:cacheprovider", "-s",
           "--continue-on-collection-errors",
           f"--junitxml={junit}", "tests"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=args.tests_timeout)
    (Path(args.work) / "pytest_cuda.log").write_text(proc.stdout + proc.stderr)
    out = {"returncode": proc.returncode, "cases": []}
    if junit.is_file():
        for case in ET.parse(junit).getroot().iter("testcase"):
            state = "passed"
            for tag in ("failure", "error", "skipped"):
                node = case.find(tag)
                if node is not None:
                    state = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                    out.setdefault("messages", {})[case.get("name")] = (node.get("message") or "")[:500]
            out["cases"].append({"name": f"{case.get('classname')}::{case.get('name')}", "state": state,
                                 "seconds": float(case.get("time", 0))})
    counts = {}
    for case in out["cases"]:
        counts[case["state"]] = counts.get(case["state"], 0) + 1
    out["counts"] = counts
    out["printed"] = [line for line in proc.stdout.splitlines() if "bf16" in line and ":" in line][:10]
    if proc.returncode not in (0, 5) or counts.get("failed") or counts.get("error"):  # 5: nothing collected
        raise RuntimeError(f"pytest -m cuda: {counts}; see pytest_cuda.log\n" + proc.stdout[-3000:])
    return out


def part_precision(args) -> dict:
    """bf16 autocast (tokenizer) and bf16 weights (GPT) against the original's fp32 parity vectors."""
    import torch

    from utils.distributed import pick_device

    from parity_checks import load_vector, rel_err, seeded_gpt_b, seeded_tokenizer, tokenizer_outputs

    device = pick_device(args.device)
    if device.type == "cuda":  # fp32 rows are strict float32, as the CPU's
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    out = {}
    configs = [("VQ_SS256", 0)] if args.quick else [("VQ_SS256", 0), ("VQ_BL256_train_new", 1)]
    for config, seed in configs:
        ref = load_vector(config, seed)
        model, _ = seeded_tokenizer(config, seed, device)
        for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
            got = tokenizer_outputs(model, ref, device, autocast_dtype=dtype)
            out[f"{config}/{name}"] = {
                "cont_feat_rel_err": rel_err(got["cont"], ref["cont_feat"]),
                "decoded_rel_err": rel_err(got["decoded"][:, :, ::8, ::8], ref["decoded_sub"]),
                "indices_equal": (got["indices"].cpu() == ref["indices"]).float().mean().item()}
        del model
    if not args.quick:
        model, ref = seeded_gpt_b("1d", device)
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            with torch.no_grad():
                logits, _ = model.to(dtype)(ref["tokens"][:, :-1].to(device), ref["labels"].to(device))
            out[f"GPT-B/{name}"] = {"logits_rel_err": rel_err(logits[:, ::16], ref["logits_every16"]),
                                    "argmax_equal": (logits.argmax(-1).cpu() == ref["logits_argmax"]).float()
                                    .mean().item()}
    return out


def part_tokenizer(args) -> dict:
    import bench_tokenizer

    if args.quick:
        runs = [("configs/vq/VQ_tiny32.yaml", 2, "fp32")]
    else:
        runs = [(f"configs/vq/{c}.yaml", 32, "bf16") for c in ("VQ_SS256", "VQ_BL256", "VQ_XLXXL256")]
    out = []
    for config, batch, dtype in runs:
        out.append(bench_tokenizer.main(["--config", str(ROOT / config), "--batch", str(batch), "--dtype", dtype,
                                         "--device", args.device, "--reps", "2" if args.quick else "3"]))
    return {"runs": out}


def part_sampling(args) -> dict:
    import bench_gpt_sampling

    if args.quick:
        cpu_modes = ["static-native-fused"] if args.device == "cpu" else []  # the project's CPU kernels
        runs = [["--gpt-model", "GPT-tiny", "--batch", "1", "4", "--modes", "eager", "static", *cpu_modes,
                 "--steps", "16", "--vocab-size", "512", "--num-classes", "10"]]
    else:
        common = ["--cfg-only", "--dtype", "bf16", "--batch", "1", "32", "256", "--modes", "eager", "cudagraph",
                  "cudagraph-fused"]
        runs = [["--gpt-model", "GPT-B", *common], ["--gpt-model", "GPT-XXL", *common],
                ["--gpt-model", "GPT-B", "--cfg-only", "--dtype", "bf16", "--batch", "32",
                 "--modes", "reduce-overhead"]]  # last: inductor's compilation takes a while
    out, errors = [], []
    for argv in runs:  # one failing run (say, a compiler error) does not lose the others
        try:
            out.append(bench_gpt_sampling.main([*argv, "--device", args.device]))
        except Exception as exc:
            errors.append(f"{' '.join(argv)}: {type(exc).__name__}: {exc}"[:2000])
            traceback.print_exc()
    if not out:
        raise RuntimeError("; ".join(errors))
    return {"runs": out, "errors": errors}


def part_train_gpt(args) -> dict:
    import bench_train_c2i

    if args.quick:
        argv = ["--gpt-model", "GPT-tiny", "--batch", "4", "--vocab-size", "512", "--block-size", "16",
                "--num-classes", "10", "--reps", "2", "--precision", "none"]
    else:
        argv = ["--gpt-model", "GPT-B", "--batch", "32", "--reps", "10", "--precision", "bf16"]
    return bench_train_c2i.main([*argv, "--device", args.device])


def part_inception(args) -> dict:
    import bench_eval

    argv = (["--images", "4", "--batch-size", "2", "--pr", "200", "--fid-dim", "64"] if args.quick
            else ["--images", "1024", "--batch-size", "128", "--pr", "10000"])
    return bench_eval.main([*argv, "--device", args.device])


# ----- orchestration -------------------------------------------------------------------------------------------------

def run_part_in_child(name: str, args) -> dict:
    """Run one part in a fresh interpreter (a CUDA fault there cannot poison the other parts)."""
    result_file = Path(args.work) / f"part_{name}.json"
    result_file.unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--part", name, "--device", args.device,
           "--work", str(args.work), "--tests-timeout", str(args.tests_timeout)] + (["--quick"] if args.quick else [])
    start = time.perf_counter()
    log = Path(args.work) / f"part_{name}.log"
    try:
        with open(log, "w") as fh:
            proc = subprocess.run(cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, timeout=args.part_timeout,
                                  env={**os.environ, "PYTHONUNBUFFERED": "1"})
        code = proc.returncode
    except subprocess.TimeoutExpired:
        code = "timeout"
    seconds = time.perf_counter() - start
    if result_file.is_file():
        record = json.loads(result_file.read_text())
    else:
        tail = log.read_text()[-3000:] if log.is_file() else ""
        record = {"ok": False, "error": f"part exited with {code} and wrote no result", "log_tail": tail}
    record["seconds"] = round(seconds, 1)
    return record


def run_part_here(name: str, args) -> None:
    _setup_paths()
    record: dict = {"ok": True}
    try:
        record["result"] = globals()[f"part_{name}"](args)
    except Exception as exc:  # a failing part is reported; the orchestrator goes on with the next
        record = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:4000], "traceback": traceback.format_exc()}
    (Path(args.work) / f"part_{name}.json").write_text(json.dumps(record, indent=1, default=str))
    if not record["ok"]:
        print(record["traceback"], file=sys.stderr)
        sys.exit(1)


def summary_lines(report: dict) -> list[str]:
    """The short table printed at the end (and the README's GPU section)."""
    parts = report["parts"]
    lines = [f"device check: {report['device']} ({report.get('gpu') or 'cpu'}), torch {report['torch']}, "
             f"{report['total_seconds']:.0f} s, {'quick' if report['quick'] else 'full'}"]
    for name in report["order"]:
        rec = parts[name]
        status = "ok" if rec["ok"] else "FAILED"
        lines.append(f"  {name:<10} {status:<7} {rec['seconds']:>6.1f} s  {_headline(name, rec)}")
    return lines


def _headline(name: str, rec: dict) -> str:
    if not rec["ok"]:
        return rec.get("error", "")[:160].replace("\n", " ")
    r = rec["result"]
    if name == "env":
        extra = f", bf16 GEMM {r['gemm_bf16_TFLOPs']:.0f} TFLOP/s" if "gemm_bf16_TFLOPs" in r else ""
        return (f"read {r['read_bandwidth_GBs']:.0f} GB/s, copy {r['copy_bandwidth_GBs']:.0f} GB/s, "
                f"fp32 GEMM {r['gemm_fp32_TFLOPs']:.2f} TFLOP/s{extra}")
    if name == "tests":
        return ", ".join(f"{k} {v}" for k, v in sorted(r["counts"].items())) or "no cuda tests collected"
    if name == "precision":
        return "; ".join(f"{k}: " + ", ".join(f"{m} {v:.2g}" for m, v in d.items()) for k, d in r.items()
                         if "bf16" in k)
    if name == "tokenizer":
        return "; ".join(f"{Path(x['config']).stem} b{x['batch']} {x['dtype']}: enc {x['encode_images_per_s']:.1f}"
                         f" dec {x['decode_images_per_s']:.1f} img/s" for x in r["runs"])
    if name == "sampling":  # per model and batch: the fastest decode path, and its speed-up over eager
        out = []
        for run in r["runs"]:
            for batch in sorted({row["batch"] for row in run["rows"]}):
                rows = [row for row in run["rows"] if row["batch"] == batch]
                best = max(rows, key=lambda row: row["tokens_per_s"])
                eager = [row for row in rows if row["mode"] == "eager"]
                gain = f", {best['tokens_per_s'] / eager[0]['tokens_per_s']:.1f}x eager" if eager else ""
                out.append(f"{run['gpt_model']} b{batch}: {best['tokens_per_s']:.0f} tok/s {best['mode']} "
                           f"({best['fraction_of_floor']:.0%} of floor{gain})")
        return "; ".join(out)
    if name == "train_gpt":
        floor = f" ({r['fraction_of_floor']:.0%} of GEMM floor)" if "fraction_of_floor" in r else ""
        return f"{r['gpt_model']} b{r['batch']}: {r['tokens_per_s']:.0f} tokens/s{floor}"
    if name == "inception":
        return (f"{r['inception_images_per_s']:.1f} images/s "
                f"({r['inception_fraction_of_gemm_rate']:.0%} of fp32 GEMM rate)")
    return ""


def render_readme(report: dict, readme: Path = README) -> None:
    """Write the report's table between the markers of benchmarks/README.md's GPU section."""
    text = readme.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{readme}: the markers {BEGIN} / {END} are missing")
    rows = ["| part | status | time | result |", "|---|---|---|---|"]
    for name in report["order"]:
        rec = report["parts"][name]
        rows.append(f"| {name} | {'ok' if rec['ok'] else 'FAILED'} | {rec['seconds']:.0f} s | "
                    f"{_headline(name, rec).replace('|', '/')} |")
    sampling = report["parts"].get("sampling", {})
    if sampling.get("ok"):
        rows += ["", "| GPT | batch | decode | CFG rows | s / batch | tokens/s | images/s | step ms | floor ms | "
                 "of floor |", "|---|---|---|---|---|---|---|---|---|---|"]
        for run in sampling["result"]["runs"]:
            for r in sorted(run["rows"], key=lambda r: (r["batch"], r["mode"])):
                rows.append(f"| {run['gpt_model']} {run['dtype']} | {r['batch']} | {r['mode']} | {r['rows']} | "
                            f"{r['s_per_batch']:.3f} | {r['tokens_per_s']:.0f} | {r['images_per_s']:.2f} | "
                            f"{r['step_ms']:.2f} | {r['floor_step_ms']:.2f} | {r['fraction_of_floor']:.0%} |")
    head = summary_lines(report)[0]
    block = "\n".join([BEGIN, f"_{head}; written by `device_check.py --render-readme`._", "", *rows, END])
    start, end = text.index(BEGIN), text.index(END) + len(END)
    readme.write_text(text[:start] + block + text[end:])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda (the check's purpose), cuda:N, or cpu (with --quick)")
    p.add_argument("--quick", action="store_true", help="tiny sizes everywhere (the chain end to end in ~2 minutes)")
    p.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS, help="which parts to run")
    p.add_argument("--out", default="results/device_check/device_check.json", help="the report JSON to write")
    p.add_argument("--work", default=None, help="folder for the parts' logs (default: beside --out)")
    p.add_argument("--part-timeout", type=int, default=400, help="seconds before a part is stopped and reported")
    p.add_argument("--tests-timeout", type=int, default=380, help="seconds for the pytest -m cuda run")
    p.add_argument("--budget", type=int, default=460,
                   help="seconds for the whole check: parts not started by then are reported as skipped")
    p.add_argument("--render-readme", metavar="JSON", default=None,
                   help="only write the GPU section of benchmarks/README.md from an existing report, then exit")
    p.add_argument("--part", default=None, choices=PARTS, help=argparse.SUPPRESS)  # internal: run one part here
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.render_readme:
        render_readme(json.loads(Path(args.render_readme).read_text()))
        print(f"wrote the GPU section of {README}")
        return 0
    out = Path(args.out)
    args.work = Path(args.work) if args.work else out.parent
    args.work.mkdir(parents=True, exist_ok=True)
    if args.part:
        run_part_here(args.part, args)
        return 0

    start = time.perf_counter()
    report = {"device": args.device, "quick": args.quick, "created": time.strftime("%Y-%m-%d %H:%M:%S"),
              "order": list(args.parts), "parts": {}}
    for name in args.parts:
        if time.perf_counter() - start > args.budget:
            report["parts"][name] = {"ok": False, "seconds": 0.0, "error": f"skipped: the --budget of {args.budget} s "
                                     "was used up (run it alone with --parts)"}
            continue
        print(f"[device_check] {name} ...", flush=True)
        report["parts"][name] = rec = run_part_in_child(name, args)
        print(f"[device_check] {name}: {'ok' if rec['ok'] else 'FAILED: ' + rec.get('error', '')[:300]} "
              f"({rec['seconds']:.0f} s)", flush=True)
        env = report["parts"].get("env", {}).get("result", {})
        report.update(torch=env.get("torch", "?"), gpu=env.get("gpu"))
        report["total_seconds"] = time.perf_counter() - start
        out.write_text(json.dumps(report, indent=1, default=str))  # after every part: a killed run keeps the rest
    report.setdefault("torch", "?")
    report["total_seconds"] = time.perf_counter() - start
    out.write_text(json.dumps(report, indent=1, default=str))
    print("\n".join(summary_lines(report)))
    print(f"[device_check] wrote {out}")
    return 0 if all(r["ok"] for r in report["parts"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
