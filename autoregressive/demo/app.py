"""GigaTok in the browser: reconstruct an image with a tokenizer, sample a class with a GPT.

    bash scripts/demo.sh                                   # installs the demo extra, then serves on 127.0.0.1:7860
    python -m autoregressive.demo [--quickstart DIR] [--port N] [--device cpu] ...

Two tabs. *Reconstruct*: an uploaded image or a shipped photo, centre-cropped to the tokenizer's size, next to its
reconstruction, with PSNR / SSIM (the values ``tokenizer.reconstruct`` reports for that image), the token indices as
a heat map and the codebook usage. *Generate*: a GPT + tokenizer pair, a class (type to search its name), CFG scale
and schedule, top-k / top-p / temperature, seed and number of images; the grid grows as images finish, and the PNGs
and a settings JSON (with the ``sample_c2i`` command that redraws them) can be downloaded.

Models: the quickstart's tiny tokenizer and GPT (``results/quickstart``, from ``bash scripts/quickstart.sh``) are the
default, so the page works offline on a CPU; the released models are listed by name and load from the Hugging Face
Hub cache (or download, with network). ``--max-resident`` models stay loaded (default one); requests queue and run one
at a time. Errors (a file that is no image, a huge image, a class out of range, a model that does not load or does
not fit into memory) are shown in the page as one message. Needs the demo extra: ``bash env_install.sh --demo``.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from utils.cli import HelpFormatter

__all__ = ["build_parser", "build_app", "main"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m autoregressive.demo", description=__doc__,
                                formatter_class=HelpFormatter)
    p.add_argument("--quickstart", action="append", default=None, metavar="DIR",
                   help="folder of a scripts/quickstart.sh run whose tokenizer and GPT are offered first (repeatable; "
                        "default: results/quickstart)")
    p.add_argument("--no-released", action="store_true",
                   help="do not list the released models (they load from the Hugging Face Hub or its cache)")
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (0.0.0.0: reachable from other machines)")
    p.add_argument("--port", type=int, default=7860, help="port to serve on")
    p.add_argument("--device", default="auto", help="auto (CUDA, else Apple MPS, else CPU), cpu, cuda, cuda:1, ...")
    p.add_argument("--max-resident", type=int, default=1,
                   help="models kept loaded at once (a GPT counts together with its tokenizer); the least recently "
                        "used one is unloaded first")
    p.add_argument("--memory-limit-gb", type=float, default=None,
                   help="refuse models whose weights need more than this (default: the device's free memory)")
    p.add_argument("--max-images", type=int, default=16, help="most images one Generate request may ask for")
    p.add_argument("--batch-size", type=int, default=None,
                   help="images sampled together (the grid grows by this many; default 1 on CPU, 4 on GPU)")
    p.add_argument("--max-pixels", type=float, default=40e6, help="largest upload accepted, in pixels")
    p.add_argument("--max-upload-mb", type=float, default=50, help="largest upload accepted, in MB")
    p.add_argument("--queue-size", type=int, default=32, help="requests that may wait in the queue")
    p.add_argument("--output-dir", default=None,
                   help="where generated PNGs and settings go (default: a new temporary folder)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    return p


class Demo:
    """The state behind the page: the model lists, the model pool and the two actions."""

    def __init__(self, args: argparse.Namespace):
        import torch

        from autoregressive.demo import models as m
        from utils.distributed import pick_device

        self.args, self.m = args, m
        self.device = pick_device(args.device)
        self.quickstart_dirs = [Path(d) for d in (args.quickstart or [m.DEFAULT_QUICKSTART])]
        gpt_dtype = torch.bfloat16 if self.device.type == "cuda" and torch.cuda.is_bf16_supported() else None
        limit = None if args.memory_limit_gb is None else int(args.memory_limit_gb * 2 ** 30)
        self.pool = m.ModelPool(self.device, args.max_resident, limit, gpt_dtype)
        self.batch_size = args.batch_size or (4 if self.device.type == "cuda" else 1)
        self.out_dir = Path(args.output_dir or tempfile.mkdtemp(prefix="gigatok-demo-"))
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.photos = sorted(p.name for p in m.PHOTOS.glob("*.png")) if m.PHOTOS.is_dir() else []
        self.counter = 0
        self.refresh()

    def refresh(self) -> None:
        """(Re)read the model lists: after the quickstart was made from the page, its models appear."""
        self.tokenizers, self.generators = [], []
        for folder in self.quickstart_dirs:
            toks, gens = self.m.quickstart_models(folder)
            self.tokenizers += toks
            self.generators += gens
        self.has_quickstart = bool(self.generators)
        if not self.args.no_released:
            toks, gens = self.m.released_models()
            self.tokenizers += toks
            self.generators += gens

    # ----- lookups --------------------------------------------------------------------------------------------
    def tokenizer(self, label: str):
        found = next((t for t in self.tokenizers if t.label == label), None)
        if found is None:
            raise self.m.DemoError("choose a tokenizer" if not label else f"unknown tokenizer {label!r}")
        return found

    def generator(self, label: str):
        found = next((g for g in self.generators if g.label == label), None)
        if found is None:
            raise self.m.DemoError("choose a GPT" if not label else f"unknown GPT {label!r}")
        return found

    @staticmethod
    def class_choices(choice) -> list[str]:
        return [f"{i}: {name}" for i, name in enumerate(choice.class_names)] if choice else []

    def status(self) -> str:
        lines = [f"Running on **{self.device}**; {self.pool.max_resident} model(s) kept loaded; requests run one at "
                 "a time."]
        if not self.has_quickstart:
            where = ", ".join(str(d) for d in self.quickstart_dirs)
            lines.append(f"**The quickstart's models are missing** ({where}): {self.m.QUICKSTART_HINT}.")
        return "  \n".join(lines)

    # ----- actions --------------------------------------------------------------------------------------------
    def reconstruct(self, tok_label: str, upload: Any, example: str | None, progress) -> tuple:
        """-> (pair image, metrics markdown, heat map, message)."""
        m = self.m
        try:
            path = _upload_path(upload) or (str(m.PHOTOS / example) if example else None)
            image = m.open_image(path, int(self.args.max_pixels), int(self.args.max_upload_mb * 2 ** 20))
            choice = self.tokenizer(tok_label)
            with self.pool.lock:
                tok = self.pool.tokenizer(choice, _progress(progress))
                _progress(progress)(0.6, "encoding and decoding")
                r = m.reconstruct(tok, image)
            metrics = (f"**PSNR** {r['psnr']:.4f} dB &nbsp; **SSIM** {r['ssim']:.4f}  \n"
                       f"**codebook usage** {r['distinct_codes']} distinct codes of {r['codebook_size']} "
                       f"({100 * r['codebook_usage']:.1f}%) in {r['codes'].size} tokens  \n"
                       f"{Path(path).name}: centre crop to {tok.image_size} x {tok.image_size} | reconstruction by "
                       f"{choice.label}")
            return r["pair"], metrics, r["heatmap"], ""
        except Exception as exc:  # noqa: BLE001 - every failure is a message in the page
            return None, "", None, _message(exc, m.DemoError)

    def generate(self, gen_label: str, class_text: str, cfg_scale: float, schedule: str, window_start: float,
                 top_k: float, top_p: float, temperature: float, seed: float, num_images: float, progress):
        """Yields (gallery items, download files, message) as images finish."""
        m = self.m
        try:
            choice = self.generator(gen_label)
            req = m.SampleRequest(m.parse_class(class_text, choice.class_names), int(num_images), float(cfg_scale),
                                  schedule, float(window_start), int(top_k), float(top_p), float(temperature),
                                  int(seed))
            req.check(self.args.max_images)
            self.counter += 1
            folder = self.out_dir / f"generate-{time.strftime('%Y%m%d-%H%M%S')}-{self.counter:04d}"
            folder.mkdir(parents=True)
            name = choice.class_names[req.class_id]
            items, files = [], []
            with self.pool.lock:
                gpt, tok = self.pool.generator(choice, _progress(progress))
                for i, img in enumerate(m.sample_images(gpt, tok, req, self.batch_size)):
                    from PIL import Image
                    path = folder / f"class{req.class_id:04d}_seed{req.seed}_{i:03d}.png"
                    Image.fromarray(img).save(path)
                    items.append((str(path), f"{req.class_id}: {name} #{i}"))
                    files.append(str(path))
                    _progress(progress)(0.3 + 0.7 * (i + 1) / req.num_images, f"image {i + 1} of {req.num_images}")
                    yield list(items), None, f"{i + 1} of {req.num_images} images of class {req.class_id} ({name})"
            settings = m.write_settings(folder / "settings.json", choice, req, self.device, files)
            yield list(items), [*files, str(settings)], (f"{req.num_images} images of class {req.class_id} ({name}) "
                                                          f"with {choice.label}; saved in {folder}")
        except Exception as exc:  # noqa: BLE001 - every failure is a message in the page
            yield [], None, _message(exc, m.DemoError)

    def make_quickstart(self):
        """Run scripts/quickstart.sh into the first --quickstart folder, streaming its last lines."""
        target = self.quickstart_dirs[0]
        script = self.m.REPO / "scripts" / "quickstart.sh"
        if not script.is_file():
            yield (f"**Error:** {script} is missing: the quickstart runs from a clone of the repository, not from an "
                   "installed package.")
            return
        proc = subprocess.Popen(["bash", str(script), str(target)],
                                cwd=self.m.REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        tail: list[str] = []
        for line in proc.stdout:
            tail = (tail + [line.rstrip()])[-12:]
            yield "```\n" + "\n".join(tail) + "\n```"
        code = proc.wait()
        self.refresh()
        done = ("Done: reload the page to use the quickstart's models." if code == 0 and self.has_quickstart
                else f"The quickstart stopped with exit code {code}; see the lines above.")
        yield "```\n" + "\n".join(tail) + "\n```\n" + done


def _upload_path(upload: Any) -> str | None:
    if upload is None:
        return None
    if isinstance(upload, (list, tuple)):
        upload = upload[0] if upload else None
    return getattr(upload, "name", upload)


def _progress(progress):
    def report(fraction: float, desc: str = "") -> None:
        if progress is not None:
            try:
                progress(fraction, desc=desc)
            except Exception:  # noqa: BLE001 - a progress bar must never fail a request
                pass
    return report


def _message(exc: BaseException, known: type) -> str:
    """One line for the page; an unexpected error is also printed with its traceback on the server's console."""
    if not isinstance(exc, known):
        traceback.print_exc()
    text = str(exc).strip() or type(exc).__name__
    return f"**Error:** {text}"


CSS = """
#recon-pair img, #recon-codes img, #gen-gallery img { image-rendering: pixelated; }
#recon-pair img { width: 100%; height: 100%; object-fit: contain; }  /* small tokenizers: enlarged, not blurred */
#recon-message, #gen-message { color: #b42318; }
"""


def build_app(demo: Demo):
    """The gradio Blocks of the page (theme without web fonts, so it needs no network)."""
    import gradio as gr

    from autoregressive.models.generate import CFG_SCHEDULES

    theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                              font_mono=["ui-monospace", "monospace"])
    toks = [t.label for t in demo.tokenizers]
    gens = [g.label for g in demo.generators]
    first_gen = demo.generators[0] if demo.generators else None
    with gr.Blocks(title="GigaTok demo", theme=theme, css=CSS, analytics_enabled=False) as app:
        gr.Markdown("# GigaTok: image tokenizers and class-conditional GPTs")
        gr.Markdown(demo.status(), elem_id="status")
        if not demo.has_quickstart:
            make = gr.Button("Make the quickstart models (about 6 minutes on 2 CPU cores)", elem_id="make-quickstart")
            make_log = gr.Markdown(elem_id="make-quickstart-log")
            make.click(demo.make_quickstart, None, make_log, concurrency_id="models")
        with gr.Tab("Reconstruct", elem_id="tab-reconstruct"):
            with gr.Row():
                with gr.Column(scale=1):
                    tok_dd = gr.Dropdown(toks, value=toks[0] if toks else None, label="Tokenizer",
                                         elem_id="recon-tokenizer")
                    upload = gr.File(label="Upload an image", file_types=["image"], type="filepath",
                                     elem_id="recon-upload")
                    example = gr.Dropdown(demo.photos, value=demo.photos[0] if demo.photos else None,
                                          label="... or a shipped photo (used when nothing is uploaded)",
                                          elem_id="recon-example")
                    run_recon = gr.Button("Reconstruct", variant="primary", elem_id="recon-run")
                with gr.Column(scale=2):
                    recon_msg = gr.Markdown(elem_id="recon-message")
                    pair = gr.Image(label="original (centre crop) | reconstruction", type="numpy", format="png",
                                    interactive=False, height=288, elem_id="recon-pair")
                    metrics = gr.Markdown(elem_id="recon-metrics")
                    heat = gr.Image(label="token indices (viridis over the codebook)", type="numpy", format="png",
                                    interactive=False, height=288, elem_id="recon-codes")

            def do_reconstruct(tok_label, upload_value, example_value, progress=gr.Progress()):  # noqa: B008
                return demo.reconstruct(tok_label, upload_value, example_value, progress)

            run_recon.click(do_reconstruct, [tok_dd, upload, example], [pair, metrics, heat, recon_msg],
                            concurrency_id="models")
        with gr.Tab("Generate", elem_id="tab-generate"):
            with gr.Row():
                with gr.Column(scale=1):
                    gen_dd = gr.Dropdown(gens, value=gens[0] if gens else None, label="GPT + tokenizer",
                                         elem_id="gen-model")
                    classes = demo.class_choices(first_gen)
                    class_dd = gr.Dropdown(classes, value=classes[0] if classes else None, allow_custom_value=True,
                                           filterable=True, label="Class (type to search, or a class id)",
                                           elem_id="gen-class")
                    cfg = gr.Slider(1.0, 10.0, value=first_gen.cfg_scale if first_gen else 4.0, step=0.25,
                                    label="CFG scale", elem_id="gen-cfg")
                    schedule = gr.Dropdown(list(CFG_SCHEDULES), value="constant", label="CFG schedule",
                                           elem_id="gen-schedule")
                    window = gr.Slider(0.0, 1.0, value=0.18, step=0.01, label="window start (step schedule)",
                                       elem_id="gen-window")
                    with gr.Row():
                        top_k = gr.Number(0, label="top-k (0: all)", precision=0, elem_id="gen-topk")
                        top_p = gr.Slider(0.05, 1.0, value=1.0, step=0.05, label="top-p", elem_id="gen-topp")
                    with gr.Row():
                        temperature = gr.Slider(0.1, 2.0, value=1.0, step=0.05, label="temperature",
                                                elem_id="gen-temperature")
                        seed = gr.Number(0, label="seed", precision=0, elem_id="gen-seed")
                    num = gr.Slider(1, demo.args.max_images, value=min(4, demo.args.max_images), step=1,
                                    label="number of images", elem_id="gen-num")
                    run_gen = gr.Button("Generate", variant="primary", elem_id="gen-run")
                with gr.Column(scale=2):
                    gen_msg = gr.Markdown(elem_id="gen-message")
                    gallery = gr.Gallery(label="samples", columns=4, height="auto", object_fit="contain",
                                         elem_id="gen-gallery")
                    downloads = gr.File(label="PNGs and settings.json", file_count="multiple", interactive=False,
                                        elem_id="gen-files")

            def pick_model(label):
                try:
                    choice = demo.generator(label)
                except Exception:  # noqa: BLE001
                    return gr.update(), gr.update()
                names = demo.class_choices(choice)
                return gr.update(choices=names, value=names[0]), gr.update(value=choice.cfg_scale)

            gen_dd.change(pick_model, gen_dd, [class_dd, cfg])

            def do_generate(label, class_text, cfg_scale, sched, ws, k, p, temp, s, n,
                            progress=gr.Progress()):  # noqa: B008
                yield from demo.generate(label, class_text, cfg_scale, sched, ws, k, p, temp, s, n, progress)

            run_gen.click(do_generate, [gen_dd, class_dd, cfg, schedule, window, top_k, top_p, temperature, seed, num],
                          [gallery, downloads, gen_msg], concurrency_id="models")
    return app


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio  # noqa: F401
    except ImportError as exc:
        raise NotImplementedError("the demo needs gradio: bash env_install.sh --demo (or pip install -e '.[demo]')") \
            from exc
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    demo = Demo(args)
    app = build_app(demo)
    # one queue, one worker for every model-using event: requests wait their turn instead of sharing a model
    app.queue(default_concurrency_limit=1, max_size=args.queue_size)
    print(f"[demo] {len(demo.tokenizers)} tokenizers, {len(demo.generators)} GPTs on {demo.device}; outputs in "
          f"{demo.out_dir}", flush=True)
    print(f"[demo] open http://{args.host}:{args.port} in a browser (Ctrl+C stops the server)", flush=True)
    app.launch(server_name=args.host, server_port=args.port, show_error=False, inbrowser=False, share=False,
               allowed_paths=[str(demo.out_dir)], max_file_size=f"{int(args.max_upload_mb)}mb", quiet=False)

