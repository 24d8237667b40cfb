"""Summary of a scripts/quickstart.sh run: one table of the metrics, where the pictures are, ``summary.json``.

    python -m evaluations.quickstart_report --out-dir results/quickstart --recon-metrics R.json --gen-metrics G.json \
        --classifier C.json [--check]

With ``--check`` the exit status is 1 unless the reconstructions and samples pass the quickstart's bar (held-out
PSNR above ``--min-psnr`` and sample classifier accuracy above ``--min-accuracy``), so CI can run the quickstart.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def read_json(path: str | Path, what: str) -> dict:
    p = Path(path)
    if not p.is_file():
        raise SystemExit(f"quickstart_report: the {what} file {str(p)!r} does not exist (did that step fail?)")
    return json.loads(p.read_text())


def build_summary(recon: dict, gen: dict, clf: dict, out_dir: Path, samples_npz: str | None,
                  seconds: float | None) -> dict:
    def first(pattern: str) -> str | None:
        found = sorted(out_dir.glob(pattern))
        return str(found[0]) if found else None

    return {
        "reconstruction": {k: recon.get(k) for k in ("num_images", "psnr", "ssim", "rfid", "codebook_usage")},
        "generation": {"num_samples": gen.get("num_sample_images", clf.get("num_samples")),
                       **{k: gen.get(k) for k in ("fid", "sfid", "precision", "recall", "inception_score")}},
        "classifier": {k: clf.get(k) for k in ("real_val_accuracy", "sample_accuracy", "chance")},
        "pictures": {"reconstructions": first("reconstruction/*/grid.png"),
                     "class_grid": first("samples/**/multi_class_grid.png"),
                     "samples_npz": samples_npz,
                     # training curves, redrawn by the trainers at each checkpoint (utils.plot_run)
                     "tokenizer_curves": first("tokenizer/*/curves.png"),
                     "gpt_curves": first("gpt/*/curves.png")},
        "seconds": seconds,
    }


def format_summary(s: dict) -> str:
    r, g, c, p = s["reconstruction"], s["generation"], s["classifier"], s["pictures"]

    def num(v, fmt="{:.3f}"):
        return "n/a" if v is None else fmt.format(v)

    lines = [
        f"tokenizer  held-out reconstructions ({r['num_images']} images): PSNR {num(r['psnr'], '{:.2f}')} dB, "
        f"SSIM {num(r['ssim'])}, rFID {num(r['rfid'], '{:.2f}')}, codebook usage {num(r['codebook_usage'])}",
        f"GPT        {g['num_samples']} samples vs held-out images: FID {num(g['fid'], '{:.2f}')}, "
        f"sFID {num(g['sfid'], '{:.2f}')}, precision {num(g['precision'])}, recall {num(g['recall'])}",
        f"classes    a small CNN trained on the real images labels {num(c['sample_accuracy'])} of the samples "
        f"correctly (real held-out images: {num(c['real_val_accuracy'])}, chance {num(c['chance'])})",
        "FID values from a few hundred images are strongly biased upwards: compare them between runs, not with "
        "papers.",
        f"pictures   reconstructions (original | reconstruction): {p['reconstructions']}",
        f"           class grid: {p['class_grid']}",
    ]
    curves = [c for c in (p.get("tokenizer_curves"), p.get("gpt_curves")) if c]
    if curves:
        lines.append(f"curves     training curves: {'  '.join(curves)}")
    else:
        lines.append("curves     none drawn (matplotlib missing: bash env_install.sh --plot, then "
                     "python -m utils.plot_run RUN_DIR)")
    if s.get("seconds") is not None:
        lines.append(f"time       {s['seconds'] / 60:.1f} minutes")
    return "\n".join(lines)


def failures(s: dict, min_psnr: float, min_accuracy: float) -> list[str]:
    out = []
    psnr, acc = s["reconstruction"]["psnr"], s["classifier"]["sample_accuracy"]
    if psnr is None or psnr <= min_psnr:
        out.append(f"held-out PSNR {psnr} dB is not above {min_psnr} dB")
    if acc is None or acc <= min_accuracy:
        out.append(f"sample classifier accuracy {acc} is not above {min_accuracy}")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out-dir", required=True, help="the quickstart's output folder (summary.json goes here)")
    p.add_argument("--recon-metrics", required=True, help="metrics.json of tokenizer.reconstruct")
    p.add_argument("--gen-metrics", required=True, help="<samples>.metrics.json of autoregressive.sample_c2i")
    p.add_argument("--classifier", required=True, help="JSON written by evaluations.classifier --out")
    p.add_argument("--samples-npz", default=None, help="the sampled images (recorded in the summary)")
    p.add_argument("--seconds", type=float, default=None, help="wall time of the run (recorded in the summary)")
    p.add_argument("--check", action="store_true", help="exit 1 unless PSNR and sample accuracy pass the bar")
    p.add_argument("--min-psnr", type=float, default=18.0, help="--check: held-out PSNR bar in dB")
    p.add_argument("--min-accuracy", type=float, default=0.5, help="--check: sample classifier accuracy bar")
    args = p.parse_args(argv)
    out_dir = Path(args.out_dir)
    summary = build_summary(read_json(args.recon_metrics, "reconstruction metrics"),
                            read_json(args.gen_metrics, "generation metrics"),
                            read_json(args.classifier, "classifier results"), out_dir, args.samples_npz,
                            args.seconds)
    failed = failures(summary, args.min_psnr, args.min_accuracy)
    summary["check"] = {"min_psnr": args.min_psnr, "min_accuracy": args.min_accuracy, "failures": failed}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    print(format_summary(summary))
    print(f"summary    {out_dir / 'summary.json'}")
    for f in failed:
        print(f"[quickstart] BELOW THE BAR: {f}", file=sys.stderr)
    return 1 if (failed and args.check) else 0


if __name__ == "__main__":
    from utils.cli import run_cli
    run_cli(main, "quickstart_report")
