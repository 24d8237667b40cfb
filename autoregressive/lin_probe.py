"""Linear probe on GPT features (MAE recipe), as the paper's "Acc." column.

Feature of an image: its tokens (from the tokenizer) run teacher-forced through the GPT with the NULL class;
the hidden state after the first ``n_layer / 2`` blocks (``--n-layer`` overrides), averaged over all positions.
The GPT runs in eval mode throughout (deterministic features); the original left its dropout active while the probe
trained.

The GPT's model flags (``--gpt-model``, ``--gpt-num-classes``, ``--gpt-2d``) and ``--tok-config`` default to what the
checkpoints record (a training checkpoint's ``gpt_config``, a tokenizer checkpoint's ``config``); a given flag that
contradicts the checkpoint is an error naming both values. Released files store no config: flags and defaults apply.
"""
from __future__ import annotations

import argparse
import os

import torch

from autoregressive.loading import GPT_FLAGS, gpt_build_config, load_gpt, settle_gpt_flags
from evaluations.lin_probe import add_probe_args, run_probe
from tokenizer import load_tokenizer, settle_tokenizer_config, tokenizer_info
from utils.compat import add_inert_flags
from utils.distributed import pick_device


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_probe_args(p)
    p.add_argument("--tok-config", "--model-config", dest="tok_config", default=None,
                   help="tokenizer YAML (default: the tokenizer checkpoint's stored config, the released model's "
                        "YAML, or the one the GPT checkpoint records)")
    p.add_argument("--vq-ckpt", required=True, help="tokenizer weights")
    p.add_argument("--gpt-model", default=None, help="GPT preset (default: the checkpoint's, else GPT-B)")
    p.add_argument("--gpt-ckpt", required=True, help="GPT weights")
    # store_true with default None: "not given" (None) is told apart from "given" (True) to check the checkpoint
    p.add_argument("--gpt-2d", action="store_true", default=None,
                   help="the GPT is the 2D-RoPE variant (default: as the checkpoint records; released GPTs: off)")
    p.add_argument("--gpt-num-classes", type=int, default=None,
                   help="classes the GPT was trained with (default: the checkpoint's, else 1000)")
    p.add_argument("--n-layer", type=int, default=None, help="feature after this many blocks (default n_layer/2)")
    add_inert_flags(p, "--num-code")
    return p.parse_args(argv)


# The GPT flags of this probe: --gpt-num-classes for the class count (its --num-classes is the probe's), and no
# --qk-norm / --cls-token-num flags (they come from the checkpoint, else the released GPTs' values).
PROBE_GPT_FLAGS = tuple(("--gpt-num-classes", "gpt_num_classes", key, default) if key == "num_classes"
                        else (flag, attr, key, default) for flag, attr, key, default in GPT_FLAGS)


def settle_models(args: argparse.Namespace) -> dict:
    """The GPT config to build, with the model flags settled against the checkpoints (a flag not given takes the
    checkpoint's value, a given one must agree); ``args.tok_config`` becomes the tokenizer's config."""
    description = settle_gpt_flags(args, args.gpt_ckpt, PROBE_GPT_FLAGS)
    args.tok_config = settle_tokenizer_config(args.vq_ckpt, args.tok_config, description)
    info = tokenizer_info(args.tok_config)
    return gpt_build_config(args, description, info["codebook_size"], info["num_tokens"], "the tokenizer",
                            num_classes_attr="gpt_num_classes")


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = pick_device(args.device, int(os.environ.get("LOCAL_RANK", 0)))
    args.device = str(device)  # results record the device used, not "auto"
    gpt_config = settle_models(args)
    tok = load_tokenizer(args.tok_config, args.vq_ckpt, device=device)
    gpt = load_gpt(gpt_config, args.gpt_ckpt, device=device)
    for module in (tok, gpt):
        for q in module.parameters():
            q.requires_grad_(False)
    depth = args.n_layer or len(gpt.layers) // 2

    def features(x: torch.Tensor) -> torch.Tensor:
        codes = tok.encode(x)[2][2].reshape(x.shape[0], -1)
        null = torch.full((x.shape[0],), gpt.num_classes, dtype=torch.long, device=x.device)
        hidden = gpt(codes[:, :-1], null, ret_inner_feat_layer=depth)
        return hidden.mean(dim=1)

    with torch.no_grad():
        dim = features(torch.zeros(1, 3, tok.image_size, tok.image_size, device=device)).shape[1]
    return run_probe(args, features, dim, tok.image_size, "LM",
                     {"gpt_model": args.gpt_model, "gpt_ckpt": str(args.gpt_ckpt), "feature_layer": depth})


if __name__ == "__main__":
    from utils.cli import run_cli
    run_cli(main, "lin_probe")
