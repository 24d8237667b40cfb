"""``save_pretrained`` folders: ``model.safetensors`` + a config + a model card, and their Hub upload.

One folder layout for tokenizers and GPTs, so that a trained or converted model can be shared the way timm and
TiTok users expect (``model.save_pretrained(dir)``, ``model.push_to_hub("you/name")``) and read back by the same
loaders as any checkpoint (``load_tokenizer(dir)``, ``load_gpt("hf://you/name")``):

* ``model.safetensors``: the weights (the state dict the loaders select from a training checkpoint), with the
  folder's ``format_version`` in its header metadata (folders written before it existed read as version 0);
* ``config.yaml`` (tokenizer: the tokenizer config) or ``config.json`` (GPT: ``gpt_model`` + model arguments);
* ``README.md``: a model card (kind, architecture, metrics, training settings, licence);
* ``metrics.json`` when metrics are given.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

import torch

from utils.checkpoint import (
    FORMAT_VERSION,
    PRETRAINED_WEIGHTS,
    SAFETENSORS_VERSION_KEY,
    CheckpointError,
    _hub_download,
)

TOKENIZER_CONFIG = "config.yaml"
GPT_CONFIG = "config.json"
METRICS = "metrics.json"
CARD = "README.md"
KINDS = {"tokenizer": TOKENIZER_CONFIG, "gpt": GPT_CONFIG}
LICENSE_NOTE = ("The code that wrote these files is MIT-licensed (gigatok, a reimplementation of GigaTok). Weights "
                "converted from the released GigaTok checkpoints (Hub `YuuTennYi/GigaTok`) keep the licence of that "
                "release (the GigaTok repository is MIT-licensed); weights you trained yourself are yours to license.")


def is_hub_repo(spec: Any) -> bool:
    """``hf://OWNER/REPO`` (a whole Hub repository, not one file in it)."""
    if not isinstance(spec, str) or not spec.startswith("hf://"):
        return False
    parts = spec[len("hf://"):].split("/")
    return len(parts) == 2 and all(parts)


def pretrained_folder(spec: Any, kind: str) -> Path | None:
    """The local folder of a ``save_pretrained`` model given as a folder or ``hf://OWNER/REPO`` (its config and
    weights downloaded through the Hub cache); None when ``spec`` is neither (another kind of argument)."""
    config_name = KINDS[kind]
    if is_hub_repo(spec):
        repo = spec[len("hf://"):]
        config = _hub_download(repo, config_name, spec)
        weights = _hub_download(repo, PRETRAINED_WEIGHTS, spec)
        if config.parent != weights.parent:  # pragma: no cover - one snapshot folder per revision
            raise CheckpointError(f"{spec!r}: {config_name} and {PRETRAINED_WEIGHTS} came from different revisions")
        return config.parent
    from utils.sharded_checkpoint import is_sharded_checkpoint

    if not isinstance(spec, (str, os.PathLike)) or not Path(spec).is_dir() or is_sharded_checkpoint(spec):
        return None  # a sharded training checkpoint is a checkpoint, read as one (utils.sharded_checkpoint)
    folder = Path(spec)
    missing = [name for name in (config_name, PRETRAINED_WEIGHTS) if not (folder / name).is_file()]
    if missing:
        other = next((k for k, name in KINDS.items() if k != kind and (folder / name).is_file()), None)
        hint = f" (it holds a {other} config: load it with the {other} loader)" if other else ""
        raise CheckpointError(f"folder {str(folder)!r} is not a saved {kind}: {' and '.join(missing)} missing{hint}")
    return folder


def _unshared(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU, contiguous tensors with no two sharing memory (safetensors refuses shared storage); values unchanged."""
    out, seen = {}, set()
    for key, value in state_dict.items():
        value = value.detach().to("cpu")
        if not value.is_contiguous() or value.untyped_storage().data_ptr() in seen:
            value = value.contiguous().clone()
        seen.add(value.untyped_storage().data_ptr())
        out[key] = value
    return out


def write_folder(folder: str | os.PathLike, kind: str, state_dict: Mapping[str, torch.Tensor],
                 config: Mapping[str, Any], name: str | None = None, metrics: Mapping | str | os.PathLike | None = None,
                 training: Mapping[str, Any] | None = None, source: str | None = None) -> Path:
    """Write a ``save_pretrained`` folder (weights, config, model card, metrics); returns the folder."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if isinstance(metrics, (str, os.PathLike)):
        try:
            metrics = json.loads(Path(metrics).read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"metrics file {str(metrics)!r} is not readable JSON: {exc}") from exc
    # The format version lives in the weights' header, so config.yaml / config.json stay plain model configs.
    save_file(_unshared(state_dict), str(folder / PRETRAINED_WEIGHTS),
              metadata={"format": "pt", "gigatok": kind, SAFETENSORS_VERSION_KEY: str(FORMAT_VERSION)})
    config = json.loads(json.dumps(dict(config), default=str))  # plain containers
    if kind == "tokenizer":
        import yaml
        (folder / TOKENIZER_CONFIG).write_text(yaml.safe_dump(config, sort_keys=False))
    else:
        (folder / GPT_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    if metrics is not None:
        (folder / METRICS).write_text(json.dumps(metrics, indent=2, default=str) + "\n")
    n_params = sum(v.numel() for v in state_dict.values() if v.is_floating_point())
    (folder / CARD).write_text(model_card(kind, name or folder.name, config, n_params, metrics, training, source))
    return folder


def _table(items: Mapping[str, Any]) -> str:
    rows = [f"| {k} | {json.dumps(v, default=str) if isinstance(v, (dict, list)) else v} |"
            for k, v in items.items() if not isinstance(v, dict) or len(json.dumps(v, default=str)) < 200]
    return "\n".join(["| key | value |", "|---|---|", *rows])


def model_card(kind: str, name: str, config: Mapping[str, Any], n_params: int, metrics: Mapping | None = None,
               training: Mapping[str, Any] | None = None, source: str | None = None) -> str:
    """The README.md of a saved model: what it is, how to load it, its metrics, how it was trained, its licence.
    ``name`` ``OWNER/REPO`` (a Hub upload) is used in the loading example."""
    where = f"hf://{name}" if "/" in name else "hf://OWNER/REPO"
    if kind == "tokenizer":
        model = config.get("model", {})
        what = f"a GigaTok VQ image tokenizer (`{model.get('model_cls')}`)"
        arch = {"model_cls": model.get("model_cls"), **(model.get("init_args") or {})}
        use = (f"from tokenizer import load_tokenizer\ntok = load_tokenizer(\"{where}\")   # or the local folder\n"
               "quant, _, (_, _, codes) = tok.encode(images)          # images in [-1, 1]\n"
               "recon = tok.decode_code(codes, quant.shape)")
        tags = ["image-tokenizer", "vector-quantization", "gigatok"]
        training = training if training is not None else config.get("trainer")
    else:
        what = f"a GigaTok class-conditional GPT (`{config.get('gpt_model')}`)"
        arch = dict(config)
        use = (f"from autoregressive import generate, load_gpt\ngpt = load_gpt(\"{where}\")   # or the local folder\n"
               "codes = generate(gpt, torch.tensor([207]), gpt.block_size, cfg_scale=2.0)")
        tags = ["image-generation", "autoregressive", "class-conditional", "gigatok"]
    lines = ["---", "license: mit", "library_name: pytorch", "tags:", *[f"- {t}" for t in tags], "---", "",
             f"# {name.split('/')[-1]}", "",
             f"{what[0].upper()}{what[1:]}, {n_params / 1e6:.1f}M parameters, saved by gigatok (`save_pretrained`).",
             ""]
    if source:
        lines += [f"Converted from `{source}`.", ""]
    lines += ["## Use", "", "```python", use, "```", "", "## Architecture", "", _table(arch), ""]
    if metrics:
        scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str, bool))}
        lines += ["## Metrics", "", f"From `{METRICS}` (in this folder).", "", _table(scalars), ""]
    if training:
        lines += ["## Training settings", "", _table(dict(training)), ""]
    lines += ["## Licence", "", LICENSE_NOTE, ""]
    return "\n".join(lines)


def upload_folder(folder: str | os.PathLike, repo_id: str, private: bool = False, token: str | None = None,
                  commit_message: str = "Upload with gigatok save_pretrained") -> str:
    """Create ``repo_id`` on the Hub if needed and upload ``folder`` to it; returns the commit URL (as a string)."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id=repo_id, private=private, exist_ok=True, repo_type="model")
    return str(api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model",
                                 commit_message=commit_message))


class PretrainedMixin:
    """``save_pretrained(folder)`` and ``push_to_hub(repo_id)`` for a model that says what it is through
    ``pretrained_kind`` and ``pretrained_config()``."""

    pretrained_kind: str = ""

    def pretrained_config(self) -> dict:  # pragma: no cover - implemented by the models
        raise NotImplementedError

    def save_pretrained(self, folder: str | os.PathLike, metrics: Mapping | str | os.PathLike | None = None,
                        training: Mapping[str, Any] | None = None, name: str | None = None) -> Path:
        """Write ``model.safetensors``, the config, a model card and (if given) ``metrics.json`` into ``folder``;
        the loaders read it back (``load_tokenizer(folder)`` / ``load_gpt(folder)``)."""
        return write_folder(folder, self.pretrained_kind, self.state_dict(), self.pretrained_config(), name=name,
                            metrics=metrics, training=training)

    def push_to_hub(self, repo_id: str, private: bool = False, token: str | None = None,
                    metrics: Mapping | str | os.PathLike | None = None, training: Mapping[str, Any] | None = None,
                    commit_message: str = "Upload with gigatok save_pretrained") -> str:
        """``save_pretrained`` into a temporary folder and upload it to the Hub repository ``repo_id`` (created if
        missing); load it back with ``hf://repo_id``."""
        with tempfile.TemporaryDirectory() as tmp:
            self.save_pretrained(tmp, metrics=metrics, training=training, name=repo_id)
            return upload_folder(tmp, repo_id, private=private, token=token, commit_message=commit_message)
