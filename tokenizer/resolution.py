"""A tokenizer at another image resolution than it was trained at.

Only the ViT parts depend on the resolution: their position tables over the CNN's token grid
(``*.positional_embedding``, ``grid * grid`` rows; the grid is the image size divided by the CNN's downsampling).
Moving a model to another resolution resamples those tables bicubically on the grid, as timm's
``resample_abs_pos_embed`` does for ViTs (reused here). The 1D tokenizers keep their latent-token count (and its
``latent_token_positional_embedding``): the same sequence length for the GPT; the 2D tokenizers get one token per grid
cell, so a longer sequence. Resampling is explicit: ``load_tokenizer(..., image_size=N)``, ``--image-size N`` of the
drivers, or a config whose ``image_size`` differs when a trainer starts ``--init-from`` a checkpoint.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch
from omegaconf import DictConfig

from utils.checkpoint import CheckpointError

GRID_TABLE_SUFFIX = "positional_embedding"
LATENT_TABLE_SUFFIX = "latent_token_positional_embedding"


def is_grid_table(key: str) -> bool:
    return key.endswith(GRID_TABLE_SUFFIX) and not key.endswith(LATENT_TABLE_SUFFIX)


def set_image_size(cfg: DictConfig, image_size: int) -> DictConfig:
    """``cfg`` with the model (and the loss's informational ``image_size``, which must agree) at ``image_size``."""
    cfg.model.init_args.image_size = int(image_size)
    params = (cfg.get("loss") or {}).get("params")
    if params is not None and "image_size" in params:
        params.image_size = int(image_size)
    return cfg


def resample_grid_rows(rows: torch.Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int],
                       prefix: int = 0) -> torch.Tensor:
    """``rows`` [prefix + H*W, D] (a position table: ``prefix`` rows kept as they are, then one row per cell of the
    ``old_grid`` in raster order) resampled to ``new_grid``: bicubic and antialiased, by timm's
    ``resample_abs_pos_embed``; returns [prefix + H'*W', D] in the table's dtype."""
    from timm.layers import resample_abs_pos_embed

    resized = resample_abs_pos_embed(rows[None].float(), new_size=list(new_grid), old_size=list(old_grid),
                                     num_prefix_tokens=prefix, interpolation="bicubic", antialias=True)[0]
    return resized.to(rows.dtype).contiguous()


def resample_position_tables(state_dict: Mapping[str, torch.Tensor], model: torch.nn.Module,
                             log: Callable[[str], None] | None = None) -> dict[str, torch.Tensor]:
    """``state_dict`` with every grid position table resampled to ``model``'s grid (bicubic, antialiased)."""
    own = model.state_dict()
    out = dict(state_dict)
    for key, table in state_dict.items():
        if not is_grid_table(key) or key not in own or own[key].shape == table.shape:
            continue
        old, new = table.shape[0], own[key].shape[0]
        old_grid, new_grid = math.isqrt(old), math.isqrt(new)
        if old_grid ** 2 != old or new_grid ** 2 != new or table.shape[1:] != own[key].shape[1:]:
            raise CheckpointError(f"{key}: cannot resample a {tuple(table.shape)} position table to "
                                  f"{tuple(own[key].shape)} (square grids of the same width only)")
        out[key] = resample_grid_rows(table[:, 0], (old_grid, old_grid), (new_grid, new_grid))[:, None]  # (N, 1, D)
        if log is not None:
            log(f"resampled {key}: {old_grid}x{old_grid} -> {new_grid}x{new_grid} grid (bicubic)")
    return out


def resolution_mismatch(state_dict: Mapping[str, torch.Tensor], model: torch.nn.Module) -> tuple[int, int] | None:
    """(checkpoint grid, model grid) when the two differ only in their grid position tables, else None."""
    own = model.state_dict()
    differ = [k for k, v in state_dict.items() if k in own and own[k].shape != v.shape]
    if differ and all(is_grid_table(k) for k in differ):
        return math.isqrt(state_dict[differ[0]].shape[0]), math.isqrt(own[differ[0]].shape[0])
    return None
