"""Convert a tokenizer or GPT checkpoint into a ``save_pretrained`` folder (safetensors, no pickle).

    python -m autoregressive.convert_checkpoint IN OUT_DIR [--config CONFIG] [--kind tokenizer|gpt]
        [--metrics metrics.json]

IN is a local .pt/.pth/.safetensors file, a released file name (VQ_SS256_e100.pt, fetched from the Hub) or
hf://OWNER/REPO/FILE. OUT_DIR receives model.safetensors, config.yaml (tokenizer) or config.json (GPT), a model card
README.md and, with --metrics, metrics.json; load it back with load_tokenizer(OUT_DIR) / load_gpt(OUT_DIR).

The weights are the entry the loaders use: tokenizers ``ema``, else ``model``, else ``state_dict``; GPTs ``model``,
else ``module``, else ``state_dict`` (else a bare state dict); ``module.`` / ``_orig_mod.`` prefixes are removed.
They are checked key by key and shape by shape against the model built from the config (on the meta device: no
memory for the weights). The config comes from --config, else from the checkpoint (a trainer's ``config`` /
``gpt_config`` entry), else from the released model the file name belongs to.

--trust-pickle reads a file that pickles other Python objects (torch.load without weights_only). That executes code
stored in the file: use it only for a file whose source you trust. It is the only place in this project that does;
every loader refuses such a file and names this command.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Mapping

import torch

from utils.checkpoint import (
    CheckpointError,
    check_state_dict,
    describe_checkpoint,
    load_checkpoint_file,
    resolve_checkpoint,
    select_state_dict,
    strip_prefixes,
)
from utils.cli import HelpFormatter, run_cli
from utils.config import ConfigError

TOKENIZER_ENTRIES = ("ema", "model", "state_dict")  # as tokenizer.load_tokenizer


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m autoregressive.convert_checkpoint", description=__doc__,
                                formatter_class=HelpFormatter)
    p.add_argument("input", help="checkpoint: local file, released file name or hf://OWNER/REPO/FILE")
    p.add_argument("out_dir", help="folder to write (created; existing files of the same names are replaced)")
    p.add_argument("--kind", choices=["auto", "tokenizer", "gpt"], default="auto",
                   help="what the checkpoint holds; auto: from --config or the checkpoint")
    p.add_argument("--config", "--model-config", "--tok-config", dest="config", default=None,
                   help="tokenizer YAML or released tokenizer name; or a GPT preset (GPT-B), released GPT name or "
                        "GPT YAML/JSON config with gpt_model (default: from the checkpoint or its released name)")
    p.add_argument("--metrics", default=None, help="a metrics.json to copy into the folder and its model card")
    p.add_argument("--trust-pickle", action="store_true",
                   help="unpickle a file the safe loader refuses (runs code from the file: trusted files only)")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def read_checkpoint(path: Path, trust_pickle: bool) -> dict:
    """The checkpoint as a dict: safely, or with ``trust_pickle`` by full unpickling (trusted files only)."""
    if not trust_pickle or path.suffix == ".safetensors":
        return load_checkpoint_file(path)
    obj = torch.load(path, map_location="cpu", weights_only=False)  # the user vouched for the file
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"checkpoint {str(path)!r} holds a {type(obj).__name__}, not a dict")
    return dict(obj)


def _gpt_config(spec: Any) -> dict:
    from autoregressive.loading import gpt_config_of
    return gpt_config_of(spec)


def _tokenizer_config(spec: Any) -> dict:
    from tokenizer import read_tokenizer_config, resolve_released
    from utils.config import to_plain

    config, _ = resolve_released(spec, "unused") if isinstance(spec, (str, os.PathLike)) else (spec, None)
    return to_plain(read_tokenizer_config(config))


def _looks_like_gpt(spec: str) -> bool:
    from autoregressive.models.gpt import GPT_models
    from utils.released import find_gpt

    if spec in GPT_models or find_gpt(spec) is not None:
        return True
    if Path(spec).is_file() and Path(spec).suffix in (".json", ".yaml", ".yml"):
        from utils.config import load_config, to_plain
        cfg = to_plain(load_config(spec))
        return "gpt_model" in cfg or isinstance(cfg.get("gpt"), Mapping)
    return False


def identify(kind: str, config: str | None, name: str, ckpt: Mapping) -> tuple[str, dict]:
    """``(kind, config)`` of a checkpoint: from ``config``, else the checkpoint's own record, else its released
    name; a contradiction with an explicit ``kind`` or no answer at all is an error naming what to pass."""
    from utils.released import find_gpt, find_tokenizer

    if config is not None:
        found = "gpt" if (kind == "gpt" or (kind == "auto" and _looks_like_gpt(config))) else "tokenizer"
        return found, _gpt_config(config) if found == "gpt" else _tokenizer_config(config)
    candidates = []
    description = describe_checkpoint(ckpt, name)  # the checkpoint's own record, read as every loader reads it
    if description.kind == "gpt" and not description.partial:
        candidates.append(("gpt", lambda: _gpt_config(dict(description.config))))
    if description.kind == "tokenizer":
        candidates.append(("tokenizer", lambda: _tokenizer_config(dict(description.config))))
    if find_tokenizer(name) is not None:
        candidates.append(("tokenizer", lambda: _tokenizer_config(find_tokenizer(name).name)))
    if find_gpt(name) is not None:
        candidates.append(("gpt", lambda: _gpt_config(find_gpt(name).name)))
    for found, make in candidates:
        if kind in ("auto", found):
            return found, make()
    what = f"a {kind}" if kind != "auto" else "a tokenizer or a GPT"
    raise ConfigError(f"cannot tell the config of {name!r} as {what} checkpoint (it records no config and is not a "
                      "released file): pass --config (a tokenizer YAML, or a GPT preset / config)")


def model_shapes(kind: str, config: Mapping) -> tuple[dict, dict]:
    """(state dict of meta tensors, full config) of the model ``config`` builds, without allocating its weights."""
    with torch.device("meta"):
        if kind == "tokenizer":
            from tokenizer import build_tokenizer
            model = build_tokenizer(dict(config))
        else:
            from autoregressive.loading import build_gpt
            model = build_gpt(dict(config))
    return model.state_dict(), model.pretrained_config()


def training_settings(ckpt: Mapping) -> dict | None:
    """The scalar training settings a checkpoint records (trainer config section, args, steps), for the card."""
    out = {}
    cfg = ckpt.get("config")
    if isinstance(cfg, Mapping) and isinstance(cfg.get("trainer"), Mapping):
        out.update(cfg["trainer"])
    args = ckpt.get("args")
    args = vars(args) if isinstance(args, argparse.Namespace) else args
    if isinstance(args, Mapping):
        out.update({k: v for k, v in args.items() if v is None or isinstance(v, (bool, int, float, str))})
    if isinstance(ckpt.get("steps"), int):
        out["steps"] = ckpt["steps"]
    return out or None


def main(argv=None) -> Path:
    from utils.pretrained import write_folder

    a = parse_args(argv)
    path = resolve_checkpoint(a.input)
    ckpt = read_checkpoint(path, a.trust_pickle)
    kind, config = identify(a.kind, a.config, Path(a.input).name, ckpt)
    if kind == "gpt":
        from autoregressive.loading import GPT_CHECKPOINT_ENTRIES as entries
    else:
        entries = TOKENIZER_ENTRIES
    entry = next((e for e in entries if isinstance(ckpt.get(e), Mapping)), "the bare state dict")
    state_dict = strip_prefixes(select_state_dict(ckpt, str(path), entries))
    shapes, full_config = model_shapes(kind, config)
    check_state_dict(shapes, state_dict, str(path), f"{kind} config {config.get('gpt_model', '')}".strip())
    if kind == "gpt":
        config = full_config  # every model argument spelled out
    out = write_folder(a.out_dir, kind, state_dict, config, metrics=a.metrics, training=training_settings(ckpt),
                       source=a.input)
    print(f"[convert_checkpoint] {kind} weights from {entry!r} of {str(path)!r} ({len(state_dict)} tensors) -> "
          f"{out}/ (model.safetensors, {'config.yaml' if kind == 'tokenizer' else 'config.json'}, README.md"
          f"{', metrics.json' if a.metrics else ''})", file=sys.stderr)
    return out


if __name__ == "__main__":
    run_cli(main, "convert_checkpoint")
