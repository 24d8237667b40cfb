"""What the demo shows, without any user interface: which models exist, loading them within the device's memory (one
resident at a time by default), reconstructing one image and sampling a class. ``app.py`` only wires these into the
page, so everything here is tested directly (tests/autoregressive/test_demo.py) and through the browser.

Reconstruction is the computation of ``tokenizer.reconstruct`` for one image (ADM centre crop, same PSNR / SSIM), and
image ``i`` of a generation equals image ``i`` of ``sample_c2i --mode visualize --engine eager`` with one class and
the same seed, so what the page shows can be reproduced from the command line.
"""
from __future__ import annotations

import gc
import json
import math
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from autoregressive.loading import load_gpt
from autoregressive.models.generate import CFG_SCHEDULES, check_sampling_args, generate, sample_generators
from evaluations.recon import psnr, ssim
from tokenizer import build_tokenizer, load_tokenizer
from utils.data import center_crop_arr, to_model_range, to_rgb, to_uint8

REPO = Path(__file__).resolve().parents[2]
PHOTOS = Path(__file__).resolve().parent / "examples" / "photos"  # package data (wheel too)
DEFAULT_QUICKSTART = "results/quickstart"
QUICKSTART_HINT = ("run `bash scripts/quickstart.sh` (about 6 minutes on 2 CPU cores, offline), or press "
                   "*Make the quickstart models* below, then reload this page")


class DemoError(ValueError):
    """A problem the user can act on: shown in the page as one message (never a traceback)."""


# ----- what can be chosen -----------------------------------------------------------------------------------------

@dataclass
class TokenizerChoice:
    """A tokenizer the page offers: a config (YAML, save_pretrained folder or released name) and its weights."""
    label: str
    config: Any
    checkpoint: str | None = None
    note: str = ""

    def build_meta(self) -> torch.nn.Module:
        from tokenizer import resolve_released
        config, _ = resolve_released(self.config, self.checkpoint)
        with torch.device("meta"):
            return build_tokenizer(config)

    def load(self, device: torch.device) -> torch.nn.Module:
        return load_tokenizer(self.config, self.checkpoint, device=device)


@dataclass
class GeneratorChoice:
    """A GPT and the tokenizer whose codes it was trained on, with its class names."""
    label: str
    gpt: Any                      # a gpt_config dict, a released GPT name or a save_pretrained folder
    gpt_checkpoint: str | None
    tokenizer: TokenizerChoice
    class_names: list[str] = field(default_factory=list)
    cfg_scale: float = 4.0
    note: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def build_meta(self) -> torch.nn.Module:
        from autoregressive.loading import build_gpt
        with torch.device("meta"):
            return build_gpt(self.gpt)


def imagenet_names() -> list[str]:
    """The 1000 ImageNet class names (shipped inside torchvision, no download)."""
    from torchvision.models import ResNet50_Weights
    return list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


def _newest_checkpoint(folder: Path) -> Path | None:
    found = sorted((p for p in folder.rglob("checkpoints/*.pt") if p.stem.isdigit()), key=lambda p: int(p.stem))
    return found[-1] if found else None


def quickstart_models(root: str | os.PathLike) -> tuple[list[TokenizerChoice], list[GeneratorChoice]]:
    """The tokenizers and GPTs a ``scripts/quickstart.sh`` run left in ``root`` (newest checkpoint of each run)."""
    from utils.checkpoint import read_model_description
    root = Path(root)
    toks: list[TokenizerChoice] = []
    for exp in sorted((root / "tokenizer").glob("*")):
        ckpt = _newest_checkpoint(exp)
        if ckpt is not None and (exp / "config.yaml").is_file():
            toks.append(TokenizerChoice(f"quickstart {exp.name} (step {int(ckpt.stem)})", str(exp / "config.yaml"),
                                        str(ckpt), note=f"trained by the quickstart in {root}"))
    gens: list[GeneratorChoice] = []
    names_file = root / "data" / "class_names.txt"
    names = [n.strip() for n in names_file.read_text().splitlines() if n.strip()] if names_file.is_file() else []
    for exp in sorted((root / "gpt").glob("*")):
        ckpt = _newest_checkpoint(exp)
        if ckpt is None or not toks:
            continue
        description = read_model_description(ckpt)  # the GPT the checkpoint describes (its gpt_config)
        if description.kind != "gpt" or description.partial:
            continue
        config = dict(description.config)
        vq = (exp / "vq_ckpt.txt").read_text().strip() if (exp / "vq_ckpt.txt").is_file() else ""
        tok = next((t for t in toks if vq and Path(t.checkpoint).resolve() == Path(vq).resolve()), toks[-1])
        n = int(config.get("num_classes", 10))
        gens.append(GeneratorChoice(f"quickstart {exp.name} (step {int(ckpt.stem)}) + {tok.label}", config,
                                    str(ckpt), tok, names if len(names) == n else [f"class{i}" for i in range(n)],
                                    note=f"trained by the quickstart in {root}"))
    return toks, gens


def _cached(filename: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        from utils.released import HUB_REPO
        return isinstance(try_to_load_from_cache(HUB_REPO, filename), str)
    except Exception:  # noqa: BLE001 - only a hint in the label
        return False


def released_models() -> tuple[list[TokenizerChoice], list[GeneratorChoice]]:
    """The released models by name; they load from the Hub cache, or download when the machine has network."""
    from utils.released import GPTS, TOKENIZERS
    toks = {name: TokenizerChoice(f"{name} (released, {t.params}, {'cached' if _cached(t.file) else 'Hub'})",
                                  name, None, note=f"rFID {t.rfid}") for name, t in TOKENIZERS.items()}
    names = imagenet_names()
    gens = [GeneratorChoice(f"{g.name} (released, {'cached' if _cached(g.file) else 'Hub'})", g.name, None,
                            toks[g.tokenizer], names, cfg_scale=g.cfg_scale or 2.0, note=f"gFID {g.gfid}")
            for g in GPTS.values()]
    return list(toks.values()), gens


# ----- memory and residency ---------------------------------------------------------------------------------------

def parameter_bytes(model: torch.nn.Module, dtype: torch.dtype | None = None) -> int:
    """Bytes of a model's parameters and buffers (a meta-device model: nothing allocated)."""
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * (torch.empty((), dtype=dtype).element_size() if dtype and t.is_floating_point()
                            else t.element_size()) for t in tensors)


def available_bytes(device: torch.device) -> int | None:
    """Free memory of the device (CUDA: free GPU memory; CPU: MemAvailable); None when it cannot be told."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def gib(n: float) -> str:
    return f"{n / 2 ** 30:.2f} GiB" if n >= 2 ** 27 else f"{n / 2 ** 20:.1f} MiB"


class ModelPool:
    """At most ``max_resident`` loaded models (a GPT counts with its tokenizer), least recently used evicted first;
    one lock, so requests use the models one at a time. The lock is a plain ``threading.Lock``, not an RLock: a
    streaming handler holds it across its yields and gradio may resume it on another worker thread, which must be able
    to release it. A model whose weights need more than the device has free
    (after evicting the others) is refused with a message instead of running out of memory."""

    def __init__(self, device: torch.device, max_resident: int = 1, memory_limit: int | None = None,
                 gpt_dtype: torch.dtype | None = None):
        self.device, self.max_resident, self.memory_limit = device, max(1, int(max_resident)), memory_limit
        self.gpt_dtype = gpt_dtype
        self.loaded: OrderedDict[str, Any] = OrderedDict()
        self.lock = threading.Lock()

    def _evict(self, keep: int) -> None:
        while len(self.loaded) > keep:
            self.loaded.popitem(last=False)
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _check_fits(self, label: str, need: int) -> None:
        free = self.memory_limit if self.memory_limit is not None else available_bytes(self.device)
        if free is not None and need * 1.2 > free:
            raise DemoError(f"{label} needs about {gib(need)} of memory for its weights, but the {self.device.type} "
                            f"device has {gib(free)} free: it is too big for this machine (try a smaller model, or "
                            f"a GPU with more memory)")

    def _load(self, key: str, label: str, need: int, loader: Callable[[], Any], progress: Callable) -> Any:
        if key in self.loaded:
            self.loaded.move_to_end(key)
            return self.loaded[key]
        self._evict(self.max_resident - 1)
        self._check_fits(label, need)
        progress(0.05, f"loading {label} ({gib(need)})")
        try:
            obj = loader()
        except DemoError:
            raise
        except torch.cuda.OutOfMemoryError as exc:
            raise DemoError(f"{label} does not fit into the GPU's memory ({exc})") from exc
        except Exception as exc:  # noqa: BLE001 - any load failure is a message in the page
            hint = ""
            if "offline" in str(exc).lower() or "connect" in str(exc).lower() or "hub" in str(exc).lower():
                hint = " (a released model loads from the Hugging Face Hub: it needs network once, or a filled cache)"
            raise DemoError(f"could not load {label}: {type(exc).__name__}: {exc}{hint}") from exc
        self.loaded[key] = obj
        progress(0.3, f"loaded {label}")
        return obj

    def tokenizer(self, choice: TokenizerChoice, progress: Callable = lambda *a: None) -> torch.nn.Module:
        need = parameter_bytes(self._meta(choice))
        return self._load(f"tok:{choice.label}", choice.label, need, lambda: choice.load(self.device), progress)

    def generator(self, choice: GeneratorChoice,
                  progress: Callable = lambda *a: None) -> tuple[torch.nn.Module, torch.nn.Module]:
        need = parameter_bytes(self._meta(choice), self.gpt_dtype) + parameter_bytes(self._meta(choice.tokenizer))

        def load() -> tuple[torch.nn.Module, torch.nn.Module]:
            tok = choice.tokenizer.load(self.device)
            progress(0.15, f"loaded the tokenizer; loading the GPT of {choice.label}")
            gpt = load_gpt(choice.gpt, choice.gpt_checkpoint, device=self.device, dtype=self.gpt_dtype)
            if gpt.num_classes != choice.num_classes:
                raise DemoError(f"{choice.label}: the GPT has {gpt.num_classes} classes but {choice.num_classes} "
                                "class names")
            return gpt, tok

        return self._load(f"gen:{choice.label}", choice.label, need, load, progress)

    @staticmethod
    def _meta(choice) -> torch.nn.Module:
        try:
            return choice.build_meta()
        except Exception as exc:  # noqa: BLE001 - a bad config is a message in the page
            raise DemoError(f"could not read the configuration of {choice.label}: {type(exc).__name__}: {exc}") \
                from exc


# ----- reconstruction -----------------------------------------------------------------------------------------------

def open_image(path: str | os.PathLike | None, max_pixels: int = 40_000_000,
               max_bytes: int = 50 * 2 ** 20) -> Image.Image:
    """An uploaded file as an RGB image, or a :class:`DemoError` saying why not (not an image, too large)."""
    if path is None:
        raise DemoError("no image: upload one or pick a shipped photo")
    path = Path(path)
    size = path.stat().st_size
    if size > max_bytes:
        raise DemoError(f"{path.name} is {gib(size)}; the demo accepts files up to {gib(max_bytes)}")
    try:
        with Image.open(path) as img:
            w, h = img.size
            if w * h > max_pixels:
                raise DemoError(f"{path.name} is {w} x {h} pixels ({w * h / 1e6:.0f} megapixels); the demo accepts "
                                f"images up to {max_pixels / 1e6:.0f} megapixels (--max-pixels)")
            img.load()
            return to_rgb(img)
    except DemoError:
        raise
    except Image.DecompressionBombError as exc:
        raise DemoError(f"{path.name} is too large an image ({exc})") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DemoError(f"{path.name} is not an image this demo can read ({type(exc).__name__}); upload a PNG, "
                        "JPEG, WebP, BMP or TIFF file") from exc


def code_heatmap(codes: np.ndarray, codebook_size: int, grid: tuple[int, int] | None = None,
                 min_side: int = 256) -> np.ndarray:
    """Token indices as a colour map (viridis over [0, codebook size)), upscaled by whole pixels to ``min_side``."""
    n = codes.size
    if grid is None or grid[0] * grid[1] != n:
        side = int(math.isqrt(n))
        grid = (side, side) if side * side == n else (1, n)
    values = codes.reshape(grid).astype(np.float64) / max(codebook_size - 1, 1)
    try:
        from matplotlib import colormaps
        rgb = (colormaps["viridis"](values)[..., :3] * 255).round().astype(np.uint8)
    except ImportError:  # a grey ramp without matplotlib
        rgb = np.repeat((values * 255).round().astype(np.uint8)[..., None], 3, -1)
    scale = max(1, min_side // max(grid))
    return np.kron(rgb, np.ones((scale, scale, 1), np.uint8))


@torch.no_grad()
def reconstruct(tok: torch.nn.Module, image: Image.Image) -> dict:
    """``tokenizer.reconstruct`` for one image: the centre crop, its reconstruction, PSNR, SSIM and the codes."""
    device = next(tok.parameters()).device
    crop = center_crop_arr(to_rgb(image), tok.image_size)
    x = to_model_range(crop)[None].to(device)
    quant, _, info = tok.encode(x)
    samples = tok.decode_code(info[2], quant.shape).float()
    recon = to_uint8(samples).cpu()
    gt = ((x + 1) / 2).permute(0, 2, 3, 1).float().cpu()
    restored = recon.float() / 255.0
    codes = info[2].reshape(-1).cpu().numpy()
    distinct = int(np.unique(codes).size)
    grid = tuple(int(g) for g in getattr(tok, "token_grid", ())) or None
    return {"original": np.asarray(crop), "reconstruction": recon[0].numpy(),
            "pair": np.concatenate([np.asarray(crop), recon[0].numpy()], axis=1),
            "psnr": float(psnr(restored, gt)[0]), "ssim": float(ssim(restored, gt)[0]),
            "codes": codes, "heatmap": code_heatmap(codes, tok.codebook_size, grid),
            "distinct_codes": distinct, "codebook_size": int(tok.codebook_size),
            "codebook_usage": distinct / int(tok.codebook_size)}


# ----- generation ---------------------------------------------------------------------------------------------------

def parse_class(text: Any, names: list[str]) -> int:
    """A class id from the page's class box: ``"3: Dress"``, ``"3"`` or a (unique) name; out of range -> message."""
    if text is None or str(text).strip() == "":
        raise DemoError("choose a class")
    s = str(text).strip()
    head = s.split(":", 1)[0].strip()
    if head.lstrip("-").isdigit():
        cid = int(head)
        if not 0 <= cid < len(names):
            raise DemoError(f"class id {cid} is out of range: this model has classes 0 to {len(names) - 1}")
        return cid
    hits = [i for i, n in enumerate(names) if s.lower() in n.lower()]
    if len(hits) == 1:
        return hits[0]
    if not hits:
        raise DemoError(f"no class is called {s!r}: type a class id (0 to {len(names) - 1}) or part of a name")
    raise DemoError(f"{s!r} matches {len(hits)} classes ({', '.join(names[i] for i in hits[:5])}, ...): pick one")


def schedule_kwargs(schedule: str, window_start: float) -> dict:
    """The schedule arguments the page sets: the window start of ``step`` (as ``sample_c2i --step-start-ratio``);
    the other schedules take their defaults, as in ``sample_c2i``."""
    if schedule not in CFG_SCHEDULES:
        raise DemoError(f"unknown CFG schedule {schedule!r}; choose one of {', '.join(CFG_SCHEDULES)}")
    return {"window_start": float(window_start)} if schedule == "step" else {}


@dataclass
class SampleRequest:
    class_id: int
    num_images: int
    cfg_scale: float = 4.0
    cfg_schedule: str = "constant"
    window_start: float = 0.18
    top_k: int = 0
    top_p: float = 1.0
    temperature: float = 1.0
    seed: int = 0

    def check(self, max_images: int) -> None:
        if not 1 <= int(self.num_images) <= max_images:
            raise DemoError(f"number of images must be 1 to {max_images}, got {self.num_images}")
        if int(self.seed) < 0:
            raise DemoError(f"the seed must be >= 0, got {self.seed}")
        try:
            check_sampling_args(self.cfg_scale, self.temperature, int(self.top_k), self.top_p)
        except ValueError as exc:
            raise DemoError(str(exc)) from exc
        schedule_kwargs(self.cfg_schedule, self.window_start)


@torch.no_grad()
def sample_images(gpt: torch.nn.Module, tok: torch.nn.Module, req: SampleRequest,
                  batch_size: int = 1) -> Iterator[np.ndarray]:
    """Yield uint8 HWC images of class ``req.class_id`` as they finish, ``batch_size`` at a time. Image ``i`` draws
    its random numbers from the generator of ``(seed, i)``, as ``sample_c2i``'s image ``i`` of one class."""
    device = next(gpt.parameters()).device
    kwargs = schedule_kwargs(req.cfg_schedule, req.window_start)
    for start in range(0, int(req.num_images), batch_size):
        idx = list(range(start, min(start + batch_size, int(req.num_images))))
        labels = torch.full((len(idx),), int(req.class_id), dtype=torch.long, device=device)
        codes = generate(gpt, labels, tok.num_tokens, cfg_scale=float(req.cfg_scale), cfg_schedule=req.cfg_schedule,
                         cfg_schedule_kwargs=kwargs, temperature=float(req.temperature), top_k=int(req.top_k),
                         top_p=float(req.top_p), generator=sample_generators(int(req.seed), idx))
        pixels = tok.decode_code(codes, tok.latent_shape(len(idx))).float()
        yield from to_uint8(pixels).cpu().numpy()


def write_settings(path: Path, choice: GeneratorChoice, req: SampleRequest, device: torch.device,
                   files: list[str]) -> Path:
    """The settings JSON offered for download, with the sample_c2i command that redraws the images (local models)."""
    info = {"gpt": choice.label, "tokenizer": choice.tokenizer.label, "class_id": req.class_id,
            "class_name": choice.class_names[req.class_id], **{k: getattr(req, k) for k in (
                "num_images", "cfg_scale", "cfg_schedule", "top_k", "top_p", "temperature", "seed")},
            "cfg_schedule_kwargs": schedule_kwargs(req.cfg_schedule, req.window_start), "device": str(device),
            "images": files}
    if isinstance(choice.gpt, dict) and choice.gpt_checkpoint and choice.tokenizer.checkpoint:
        from utils.checkpoint import read_model_description

        # checkpoints that describe their model need no model flags; others name the preset, classes and YAML
        gpt_flags = "" if read_model_description(choice.gpt_checkpoint).kind == "gpt" else (
            f"--gpt-model {choice.gpt['gpt_model']} --num-classes {choice.num_classes} ")
        tok_flags = "" if read_model_description(choice.tokenizer.checkpoint).kind == "tokenizer" else (
            f"--tok-config {choice.tokenizer.config} ")
        info["command"] = (
            f"python -m autoregressive.sample_c2i --mode visualize --engine eager --precision none "
            f"{gpt_flags}--gpt-ckpt {choice.gpt_checkpoint} {tok_flags}--vq-ckpt {choice.tokenizer.checkpoint} "
            f"--class-idx {req.class_id} --qual-num {req.num_images} "
            f"--cfg-scale {req.cfg_scale} --cfg-schedule {req.cfg_schedule} --step-start-ratio {req.window_start} "
            f"--top-k {req.top_k} --top-p {req.top_p} --temperature {req.temperature} --global-seed {req.seed}")
    path.write_text(json.dumps(info, indent=2))
    return path
