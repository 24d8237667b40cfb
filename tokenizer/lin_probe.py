"""Linear probe on tokenizer features (MAE recipe; the original calls this probe "not recommended").

Default feature: the ViT encoder's output after ln_post (before its output conv), averaged over tokens
(dimension = encoder width). ``--fix-dim``: after the output conv (z_channels). ``--from-decoder``: the decoder's
inner features after ``distill_depth`` layers (1D tokenizers), averaged over tokens.
"""
from __future__ import annotations

import argparse

import torch

from evaluations.lin_probe import add_probe_args, run_probe
from tokenizer import load_tokenizer, settle_tokenizer_config
from utils.compat import add_inert_flags


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_probe_args(p)
    p.add_argument("--model-config", "--tok-config", dest="model_config", default=None,
                   help="tokenizer YAML (default: the checkpoint's stored config, or the released model's YAML)")
    p.add_argument("--vq-ckpt", required=True, help="tokenizer weights")
    p.add_argument("--fix-dim", action="store_true", help="features after the encoder's output conv")
    p.add_argument("--from-decoder", action="store_true", help="decoder inner features (1D tokenizers)")
    add_inert_flags(p, "--num-code")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    import os

    from utils.distributed import pick_device
    device = pick_device(args.device, int(os.environ.get("LOCAL_RANK", 0)))
    args.device = str(device)  # results record the device used, not "auto"
    # a checkpoint that stores its config needs no --model-config; a given one must build the same model
    args.model_config = settle_tokenizer_config(args.vq_ckpt, args.model_config, flag="--model-config")
    tok = load_tokenizer(args.model_config, args.vq_ckpt, device=device)
    for q in tok.parameters():
        q.requires_grad_(False)

    def features(x: torch.Tensor) -> torch.Tensor:
        if args.from_decoder:
            quant = tok.encode(x)[0]
            return tok.decode(quant, return_feat=True)[2].mean(dim=1)
        if args.fix_dim:
            return tok.encode(x, return_code=False, return_fix_dim_feat=True)[0].flatten(2).mean(-1)
        return tok.encode(x, return_code=False, return_feat=True)[0].flatten(2).mean(-1)

    with torch.no_grad():
        dim = features(torch.zeros(1, 3, tok.image_size, tok.image_size, device=device)).shape[1]
    tag = "Tokenizer" + (" (from decoder)" if args.from_decoder else " (fixed dim)" if args.fix_dim else "")
    return run_probe(args, features, dim, tok.image_size, tag,
                     {"tokenizer_config": args.model_config, "vq_ckpt": str(args.vq_ckpt)})


if __name__ == "__main__":
    from utils.cli import run_cli
    run_cli(main, "tokenizer.lin_probe")
