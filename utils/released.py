"""The released GigaTok models (Hugging Face Hub ``YuuTennYi/GigaTok``) and the numbers the paper reports for them.

One table for everything that needs them: loading by name, the README's model table and ``scripts/reproduce.sh``.
Metrics: rFID and LPIPS on ImageNet val 256x256 (tokenizers); gFID of the GPT trained on the tokenizer's codes (50k
samples against ADM's ``VIRTUAL_imagenet256_labeled.npz``) and the linear-probe top-1 accuracy of its features (%).
"""
from __future__ import annotations

from dataclasses import dataclass

HUB_REPO = "YuuTennYi/GigaTok"


@dataclass(frozen=True)
class ReleasedTokenizer:
    name: str          # the config stem, configs/vq/<name>.yaml
    file: str          # the Hub file
    params: str        # as the paper states it
    rfid: float
    lpips: float

    @property
    def config(self) -> str:
        return f"configs/vq/{self.name}.yaml"


@dataclass(frozen=True)
class ReleasedGPT:
    name: str          # <preset>_<tokenizer short name>, e.g. GPT-B_VQ_XLXXL
    preset: str        # autoregressive.models.gpt.GPT_models key
    tokenizer: str     # ReleasedTokenizer.name the GPT was trained on
    file: str
    gfid: float
    acc: float         # linear-probe top-1 (%)
    # the sampling settings the original's docs give for this model (None: not published; search with --search)
    cfg_scale: float | None = None


TOKENIZERS = {t.name: t for t in (
    ReleasedTokenizer("VQ_SS256", "VQ_SS256_e100.pt", "136M", 1.01, 0.2226),
    ReleasedTokenizer("VQ_SB256", "VQ_SB256_e200.pt", "232M", 0.89, 0.2121),
    ReleasedTokenizer("VQ_BL256", "VQ_BL256_e200.pt", "622M", 0.81, 0.2059),
    ReleasedTokenizer("VQ_BL256_dino_disc", "VQ_BL256_dino_disc.pt", "622M", 0.51, 0.2056),
    ReleasedTokenizer("VQ_XLXXL256", "VQ_XLXXL256_e300.pt", "2.9B", 0.79, 0.1947),
)}

GPTS = {g.name: g for g in (
    ReleasedGPT("GPT-B_VQ_SS", "GPT-B", "VQ_SS256", "GPT_B256_e300_VQ_SS.pt", 4.05, 62.6),
    ReleasedGPT("GPT-B_VQ_SB", "GPT-B", "VQ_SB256", "GPT_B256_e300_VQ_SB.pt", 3.83, 62.9),
    ReleasedGPT("GPT-B_VQ_BL", "GPT-B", "VQ_BL256", "GPT_B256_e300_VQ_BL.pt", 3.26, 67.6),
    ReleasedGPT("GPT-B_VQ_BL_dino_disc", "GPT-B", "VQ_BL256_dino_disc", "GPT_B256_e300_VQ_BL_dino_disc.pt", 3.33,
                67.7),
    ReleasedGPT("GPT-B_VQ_XLXXL", "GPT-B", "VQ_XLXXL256", "GPT_B256_e300_VQ_XLXXL.pt", 3.15, 72.0, cfg_scale=1.75),
    ReleasedGPT("GPT-XL_VQ_BL", "GPT-XL", "VQ_BL256", "GPT_XL256_e300_VQ_BL.pt", 2.13, 70.6),
    ReleasedGPT("GPT-XXL_VQ_BL", "GPT-XXL", "VQ_BL256", "GPT_XXL256_e300_VQ_BL.pt", 2.03, 69.4),
    ReleasedGPT("GPT-XXL_VQ_XLXXL", "GPT-XXL", "VQ_XLXXL256", "GPT_XXL256_e300_VQ_XLXXL.pt", 1.98, 74.0),
)}


def _near(name: str, known) -> str:
    from utils.cli import did_you_mean
    return did_you_mean(name, known, cutoff=0.4)


def find_tokenizer(name: str) -> ReleasedTokenizer | None:
    """The released tokenizer called ``name`` (config stem, e.g. VQ_XLXXL256) or stored as ``name`` (its Hub file,
    e.g. VQ_XLXXL256_e300.pt); None if ``name`` is neither."""
    return TOKENIZERS.get(name) or next((t for t in TOKENIZERS.values() if t.file == name), None)


def find_gpt(name: str) -> ReleasedGPT | None:
    """The released GPT called ``name`` (GPT-B_VQ_XLXXL) or stored as ``name`` / ``name + '.pt'``
    (GPT_B256_e300_VQ_XLXXL.pt); None if ``name`` is neither."""
    return GPTS.get(name) or next((g for g in GPTS.values() if name in (g.file, g.file[:-3])), None)


def unknown_model_message(name: str) -> str:
    every = [*TOKENIZERS, *(t.file for t in TOKENIZERS.values()), *GPTS, *(g.file[:-3] for g in GPTS.values())]
    return f"{name!r} is neither a file nor a released GigaTok model{_near(name, every)}"
