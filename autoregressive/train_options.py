"""Settings of the AR trainer (autoregressive.train_c2i): one field per setting, the original's flags and defaults."""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from typing import ClassVar

from autoregressive.models.gpt import GPT_models
from utils.cli import HelpFormatter
from utils.config import ConfigError
from utils.settings import add_flags, setting
from utils.training import SETTING_GROUPS, TrainSettings

# --lr-scheduler names; "cosine" is the original c2i trainer's spelling of cosine_v2 (cosine from lr to --end-lr)
SCHEDULE_NAMES = {"const": "const", "cosine_v2": "cosine_v2", "cosine": "cosine_v2", "wsd": "wsd"}
MODEL, TOKENIZER = "model", "tokenizer"
NOT_IMPLEMENTED = "the original's GPT variant (unused by the released GPTs); not implemented here: building the " \
                  "model raises"


@dataclass
class GPTTrainSettings(TrainSettings):
    default_wandb_project: ClassVar[str] = "gpt_vqvit_imagenet_train"  # the original's

    code_path: str | None = setting(None, "folder with <dataset><size>_codes/ and _labels/ (or _packed/, "
                                          "auto-detected) from autoregressive.extract_codes", schedule_only=True,
                                    group="experiment")
    data_path: str | None = setting(None, "ImageFolder tree, or tar shards / parquet / hf:// (utils.shards), "
                                          "tokenised on the fly", schedule_only=True,
                                    group="experiment")
    dataset: str = setting("imagenet", "imagenet: images from --data-path; imagenet_code: codes from --code-path",
                           choices=["imagenet", "imagenet_code"], group="experiment")
    code_dataset_name: str = setting("imagenet", "the --dataset name given to extract_codes (folder prefix of the "
                                                 "code files)", group="experiment")
    image_size: int | None = setting(None, "image side in pixels; must equal the tokenizer's (None: the "
                                           "tokenizer's)", group="experiment")
    num_classes: int = setting(1000, "class labels lie in [0, N); the class embedding gets one more (null) row "
                                     "for CFG; 1000 as the original (ImageNet)", group="experiment")
    num_workers: int = setting(24, "DataLoader worker processes per rank (the original's 24, capped at the CPU "
                                   "count; 0 loads in the training process)", schedule_only=True, group="length")
    save_path: str = setting("results/gpt", "parent folder of experiments: the run writes to "
                                            "<save-path>/<sub-exp-dir>/", flags=("--save-path", "--results-dir"),
                             schedule_only=True, group="experiment")
    exp_name: str | None = setting(None, "experiment folder under --save-path", flags=("--sub-exp-dir", "--exp-name"),
                                   schedule_only=True, required=True, group="experiment")
    gpt_model: str = setting("GPT-B", "GPT size preset (GPT-B is the released 111M model; GPT-tiny is a 2-layer "
                                      "test model)", choices=list(GPT_models), group=MODEL)
    gpt_2d: bool = setting(False, "the original's 2D-RoPE GPT (rotary embeddings over the token grid) for 2D "
                                  "tokenizers", group=MODEL)
    gpt_type: str = setting("c2i", "c2i = class-conditional; t2i is accepted as in the original but not "
                                   "implemented", choices=["c2i", "t2i"], group=MODEL)
    grad_ckpt: bool = setting(False, "activation checkpointing per transformer block", group=MODEL)
    cls_token_num: int = setting(1, "condition tokens before the image tokens (1 for c2i)", group=MODEL)
    dropout_p: float = setting(0.1, "resid and ffn dropout", group=MODEL)
    token_dropout_p: float = setting(0.1, "dropout on the input embeddings in training", group=MODEL)
    drop_path_rate: float = setting(0.0, "> 0 forces resid/ffn dropout to 0 (original)", group=MODEL)
    class_dropout_prob: float = setting(0.1, "probability of replacing a label by the null class in training (CFG)",
                                        group=MODEL)
    rope: bool = setting(False, "the original's 1D RoPE variant: " + NOT_IMPLEMENTED, group=MODEL)
    adaLN: bool = setting(False, "adaLN-modulated blocks: " + NOT_IMPLEMENTED, flags=("--adaLN",),  # noqa: N815
                          group=MODEL)
    simple_adaLN: bool = setting(False, "simple adaLN: " + NOT_IMPLEMENTED, flags=("--simple-adaLN",),  # noqa: N815
                                 group=MODEL)
    qk_norm: bool = setting(False, "LayerNorm over the head dimension on queries and keys (off in the released "
                                   "GPTs)", group=MODEL)
    quant_way: str = setting("vq", "quantiser family of the tokenizer (only vq)", choices=["vq"], group=TOKENIZER)
    tok_config: str | None = setting(None, "tokenizer YAML (sets the GPT's vocabulary and length)",
                                     flags=("--tok-config", "--model-config"), required=True, group=TOKENIZER)
    vq_ckpt: str | None = setting(None, "tokenizer weights (needed with --dataset imagenet)", schedule_only=True,
                                  group=TOKENIZER)
    iterations: int | None = setting(None, "total steps T of the schedule (None: T from --epochs, else the "
                                           "original's 1,500,000)", flags=("--iterations", "--max-steps"),
                                     schedule_only=True, group="length")
    lr_scheduler: str = setting("const", "const, cosine_v2 (cosine to --end-lr; 'cosine' is the original's name "
                                         "for it) or wsd (constant, then a sqrt cool-down over the last "
                                         "--fract-decay of T, into cd_records/)", choices=list(SCHEDULE_NAMES),
                                group="optimisation")
    weight_decay: float = setting(5e-2, "AdamW weight decay on tensors with >= 2 dims only (not the RMSNorm "
                                        "weights), as the original", group="optimisation")
    beta2: float = setting(0.95, "AdamW beta2", group="optimisation")
    max_grad_norm: float = setting(1.0, "gradient clipping norm (0: off)", group="optimisation")
    log_every: int = setting(200, "steps between log lines and metric records", schedule_only=True,
                             group="checkpoints")
    max_milestone_num: int = setting(40, "newest milestone checkpoints kept", schedule_only=True,
                                     group="checkpoints")

    def __post_init__(self) -> None:
        super().__post_init__()
        self.lr_scheduler = SCHEDULE_NAMES[self.lr_scheduler]
        self.num_workers = min(self.num_workers, os.cpu_count() or 1)
        if self.gpt_type != "c2i":
            raise ConfigError("--gpt-type t2i is not implemented")
        if self.dataset == "imagenet" and not (self.data_path and self.vq_ckpt):
            raise ConfigError("--dataset imagenet tokenises the images of --data-path on the fly and needs "
                              "--data-path and --vq-ckpt")
        if self.dataset == "imagenet_code" and not self.code_path:
            raise ConfigError("--dataset imagenet_code needs --code-path (from autoregressive.extract_codes)")
        if self.iterations is None and self.epochs is None:
            self.iterations = 1_500_000
        if (self.iterations is not None and self.iterations < 1) or self.ckpt_every < 1:
            raise ConfigError("--iterations and --ckpt-every must be >= 1")


def build_parser(description: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m autoregressive.train_c2i", description=description,
                                     formatter_class=HelpFormatter)
    add_flags(parser, GPTTrainSettings, {**SETTING_GROUPS, MODEL: "model", TOKENIZER: "tokenizer"})
    return parser


def parse_args(argv=None, description: str | None = None) -> argparse.Namespace:
    return build_parser(description).parse_args(argv)
