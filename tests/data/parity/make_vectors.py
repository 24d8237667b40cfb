"""Regenerate the parity vectors and state-dict manifests in tests/data from the ORIGINAL GigaTok code.

Not run by the tests (they only read what this wrote). Run it from a checkout of the original repository, with a
Python that has torch, pyyaml, timm, scikit-image and einops:

    git clone https://github.com/SilentView/GigaTok /tmp/GigaTok   # commit 182920c52b2a9675efec5d787fc35278e84f4889
    cd /tmp/GigaTok && python /path/to/this/repo/tests/data/parity/make_vectors.py [--only manifests|vectors]

The original is imported unmodified; the weights come from this repo's tests/seeded_weights.py (the fill rule the
vectors assume), the inputs from scikit-image's sample photos. See README.md beside this file for the fields.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
sys.path.insert(0, str(REPO / "tests"))
from sample_photos import photo_256  # noqa: E402
from seeded_weights import seeded_state_dict  # noqa: E402

MANIFESTS = REPO / "tests" / "data" / "manifests"
TOKENIZERS = ["VQ_SS256", "VQ_SB256", "VQ_BL256", "VQ_BL256_dino_disc", "VQ_BL256_train_new", "VQ_XLXXL256",
              "VQ_SS256_2d", "VQ_SB256_2d", "VQ_BL256_2d"]
# (config, weight seed, photos): the two seed-0 files use two photos, the others one
TOKENIZER_VECTORS = [("VQ_SS256", 0, ("astronaut", "coffee")), ("VQ_SS256_2d", 0, ("astronaut", "coffee")),
                     ("VQ_SB256", 1, ("astronaut",)), ("VQ_SB256_2d", 1, ("astronaut",)),
                     ("VQ_BL256_train_new", 1, ("astronaut",)), ("VQ_BL256_2d", 1, ("astronaut",))]
GPT_ARGS = dict(vocab_size=16384, block_size=256, num_classes=1000, cls_token_num=1)
GPT_LABELS = [388, 22]
GPT_TOKEN_SEED = 0
GREEDY_CASES = {"greedy_constant": dict(cfg_scale=4.0, cfg_schedule="constant", cfg_schedule_kwargs={}),
                "greedy_step": dict(cfg_scale=1.75, cfg_schedule="step", cfg_schedule_kwargs={"window_start": 0.18})}


def original_commit() -> str:
    return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()


def build_original_tokenizer(config: str):
    from utils.model_init import load_model_from_config

    with open(os.devnull, "w") as quiet, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stdout, sys.stdout = sys.stdout, quiet  # load_model_from_config prints the whole argument dataclass
        try:
            return load_model_from_config(f"configs/vq/{config}.yaml")  # the original's own YAML
        finally:
            sys.stdout = stdout


def tokenizer_vector(config: str, seed: int, photos: tuple[str, ...], commit: str) -> dict:
    model = build_original_tokenizer(config)
    model.load_state_dict(seeded_state_dict(model.state_dict(), seed=seed), strict=True)
    model.eval()
    images = torch.stack([photo_256(p) for p in photos])
    x = images.float() / 127.5 - 1
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cont = model.encode(x, return_code=False, return_cont_feat=True)[0]
        quant, _, info = model.encode(x)
        indices = info[2]
        decoded = model.decode_code(indices, tuple(quant.shape))
    return {"kind": "tokenizer", "config": config, "seed": seed, "original_commit": commit, "photos": list(photos),
            "images": images, "cont_feat": cont, "quant": quant, "indices": indices, "quant_shape": tuple(quant.shape),
            "decoded_sub": decoded[:, :, ::8, ::8].clone(),
            "decoded_stats": (decoded.mean().item(), decoded.abs().max().item(),
                              decoded.double().pow(2).mean().item()),
            "num_params": sum(t.numel() for t in model.state_dict().values())}


def _process_group() -> None:
    import torch.distributed as dist

    if not dist.is_initialized():  # the original's generate asks for the rank
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29533")
        dist.init_process_group("gloo", rank=0, world_size=1)


def original_gpt_2d(name: str):
    """The original's 2D GPT (autoregressive/models/gpt.py), with one fix for generation: its cached decode step
    embeds the class passed as ``cond_idx`` instead of the previous token (generate always passes it), so the decode
    steps here get ``cond_idx=None``, which the original's own code path then handles correctly."""
    from autoregressive.models import gpt as original

    class Fixed(original.Transformer):
        def forward(self, idx, cond_idx, input_pos=None, targets=None, mask=None, ret_inner_feat_layer=None,
                    valid=None, using_kv_cache=False):
            if using_kv_cache and idx is not None:
                cond_idx = None
            return super().forward(idx, cond_idx, input_pos, targets, mask, ret_inner_feat_layer, valid,
                                   using_kv_cache)

    n_layer, n_head, dim = {"GPT-B": (12, 12, 768), "GPT-XXL": (48, 24, 1536)}[name]
    return Fixed(original.ModelArgs(n_layer=n_layer, n_head=n_head, dim=dim, **GPT_ARGS))


def gpt_vector(commit: str, two_d: bool = False) -> dict:
    from autoregressive.models.generate import generate
    from autoregressive.models.gpt_1d import GPT_models

    _process_group()
    model = (original_gpt_2d("GPT-B") if two_d else GPT_models["GPT-B"](**GPT_ARGS)).eval()
    model.load_state_dict(seeded_state_dict(model.state_dict(), seed=0), strict=True)
    labels = torch.tensor(GPT_LABELS)
    tokens = torch.randint(0, GPT_ARGS["vocab_size"], (len(GPT_LABELS), GPT_ARGS["block_size"]),
                           generator=torch.Generator().manual_seed(GPT_TOKEN_SEED))
    with torch.no_grad():
        logits = model(idx=tokens[:, :-1], cond_idx=labels)[0]
    out = {"kind": "gpt", "model": "GPT-B", "gpt_2d": two_d, "seed": 0, "original_commit": commit,
           "token_seed": GPT_TOKEN_SEED,
           "labels": labels, "tokens": tokens, "logits_every16": logits[:, ::16].clone(),
           "logits_argmax": logits.argmax(-1), "num_params": sum(p.numel() for p in model.parameters())}
    for key, case in GREEDY_CASES.items():
        seq = generate(model, labels, GPT_ARGS["block_size"], top_k=1, sample_logits=False, **case)
        out[key] = {**case, "tokens": seq.long()}
    return out


def shapes(state_dict: dict) -> dict:
    return {k: list(v.shape) for k, v in state_dict.items()}


def tokenizer_manifest(config: str) -> dict:
    with torch.device("meta"):
        model = build_original_tokenizer(config)
    sd = model.state_dict()
    distill = sum(p.numel() for n, p in model.named_parameters() if ".distill_mlp." in n)
    total = sum(t.numel() for t in sd.values())
    return {"config": config, "model_cls": type(model).__name__, "num_keys": len(sd), "num_params": total,
            "num_parameters": sum(p.numel() for p in model.parameters()),
            "num_params_without_distill_head": total - distill,
            "dtypes": sorted({str(t.dtype) for t in sd.values()}), "state_dict": shapes(sd)}


def gpt_manifest(name: str, two_d: bool = False) -> dict:
    from autoregressive.models.gpt_1d import GPT_models

    # on CPU: the original's constructors call .item(), which the meta device cannot
    model = original_gpt_2d(name) if two_d else GPT_models[name](**GPT_ARGS)
    sd = model.state_dict()
    variant = ("autoregressive/models/gpt.py Transformer (GPT_models_2d, 2D RoPE)" if two_d else
               "autoregressive/models/gpt_1d.py Transformer (the released checkpoints' class)")
    return {"model": name, "variant": variant,
            **GPT_ARGS, "num_keys": len(sd), "num_params": sum(t.numel() for t in sd.values()),
            "state_dict": shapes(sd)}


def write_json(path: Path, payload: dict) -> None:
    path.write_text(json.dumps(payload, indent=1) + "\n")
    print("wrote", path.relative_to(REPO))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["manifests", "vectors", "gpt2d"], default=None,
                        help="write only one kind (gpt2d: only the 2D GPT's vector and manifest)")
    args = parser.parse_args()
    sys.path.insert(0, os.getcwd())  # the original's packages (tokenizer/, autoregressive/, utils/)
    if not Path("tokenizer/tokenizer_image/vq/vq_vit_model.py").exists():
        sys.exit("run this from a checkout of the original GigaTok repository")
    torch.set_grad_enabled(False)
    commit = original_commit()
    if args.only in (None, "manifests"):
        MANIFESTS.mkdir(parents=True, exist_ok=True)
        for config in TOKENIZERS:
            write_json(MANIFESTS / f"tok_{config}.json", {"original_commit": commit, **tokenizer_manifest(config)})
        for name in ("GPT-B", "GPT-XXL"):
            write_json(MANIFESTS / f"gpt_{name}.json", {"original_commit": commit, **gpt_manifest(name)})
        write_json(MANIFESTS / "gpt_2d_GPT-B.json", {"original_commit": commit, **gpt_manifest("GPT-B", True)})
    if args.only == "gpt2d":
        write_json(MANIFESTS / "gpt_2d_GPT-B.json", {"original_commit": commit, **gpt_manifest("GPT-B", True)})
        torch.save(gpt_vector(commit, True), HERE / "GPT-B_2d_seed0.pt")
        print("wrote", (HERE / "GPT-B_2d_seed0.pt").relative_to(REPO))
    if args.only in (None, "vectors"):
        for config, seed, photos in TOKENIZER_VECTORS:
            path = HERE / f"{config}_seed{seed}.pt"
            torch.save(tokenizer_vector(config, seed, photos, commit), path)
            print("wrote", path.relative_to(REPO))
        for name, two_d in (("GPT-B_seed0.pt", False), ("GPT-B_2d_seed0.pt", True)):
            torch.save(gpt_vector(commit, two_d), HERE / name)
            print("wrote", (HERE / name).relative_to(REPO))


if __name__ == "__main__":
    main()
