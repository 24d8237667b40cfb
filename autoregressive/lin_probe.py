"""Linear probe on GPT features (MAE recipe), as the paper's "Acc." column.

Feature of an image: its tokens (from the tokenizer) run teacher-forced through the GPT with the NULL class;
the hidden state after the first ``n_layer / 2`` blocks (``--n-layer`` overrides), averaged over all positions.
The GPT runs in eval mode throughout (deterministic features); the original left its dropout active while the probe
trained.
"""
from __future__ import annotations

import argparse
import os

import torch

from autoregressive import load_gpt
from evaluations.lin_probe import add_probe_args, run_probe
from tokenizer import load_tokenizer
from utils.distributed import pick_device


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_probe_args(p)
    p.add_argument("--tok-config", "--model-config", dest="tok_config", required=True, help="tokenizer YAML")
    p.add_argument("--vq-ckpt", required=True, help="tokenizer weights")
    p.add_argument("--gpt-model", default="GPT-B", help="GPT preset")
    p.add_argument("--gpt-ckpt", required=True, help="GPT weights")
    p.add_argument("--gpt-2d", action="store_true", help="the GPT is the 2D-RoPE variant (GPT_models_2d)")
    p.add_argument("--gpt-num-classes", type=int, default=1000, help="classes the GPT was trained with")
    p.add_argument("--n-layer", type=int, default=None, help="feature after this many blocks (default n_layer/2)")
    p.add_argument("--num-code", type=int, default=None, help="accepted for compatibility (all tokens are used)")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = pick_device(args.device, int(os.environ.get("LOCAL_RANK", 0)))
    args.device = str(device)  # results record the device used, not "auto"
    tok = load_tokenizer(args.tok_config, args.vq_ckpt, device=device)
    gpt = load_gpt(args.gpt_model, args.gpt_ckpt, device=device, vocab_size=tok.codebook_size,
                   block_size=tok.num_tokens, num_classes=args.gpt_num_classes, gpt_2d=args.gpt_2d)
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
