"""Settings of the tokenizer trainer (tokenizer.train): one field per setting. A flag wins over the tokenizer config's
``trainer:`` section, which wins over the field's default (the original's)."""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import ClassVar

from utils.cli import HelpFormatter
from utils.settings import add_flags, setting
from utils.training import SETTING_GROUPS, TrainSettings

LOSS_NETS = "loss networks"


@dataclass
class TokenizerTrainSettings(TrainSettings):
    default_wandb_project: ClassVar[str] = "vqvit_imagenet_train"  # the original's

    data_path: str | None = setting(None, "ImageFolder root (class sub-folders), a flat image folder, or tar "
                                          "shards / parquet / hf://NAME[:SPLIT] (utils.shards)", yaml=False,
                                    schedule_only=True, required=True, group="experiment")
    dataset: str = setting("imagenet", "both read an ImageFolder tree (the original only knows 'imagenet')",
                           choices=["imagenet", "imagefolder"], yaml=False, group="experiment")
    model_config: str | None = setting(None, "tokenizer YAML (configs/vq/*.yaml); its content is compared on resume "
                                             "(None with --init-from: the config the weights come with)",
                                       flags=("--model-config", "--tok-config", "--config", "--vq-model"), yaml=False,
                                       schedule_only=True, group="experiment")
    init_from: str | None = setting(None, "fine-tune: start a new experiment from these weights, a released "
                                          "tokenizer's name (VQ_BL256), a checkpoint or a save_pretrained folder; "
                                          "weights only (a fresh discriminator and optimisers, step 0); with "
                                          "--image-size another resolution (the position tables are resampled)",
                                    yaml=False, schedule_only=True, group="experiment")
    config_overrides: list = setting([], "dotted config overrides, e.g. trainer.lr=2e-4 (also as trailing "
                                         "arguments)", yaml=False, schedule_only=True, group="experiment")
    exp_index: int | None = setting(None, "prefix %%03d of the default experiment name", yaml=False,
                                    schedule_only=True, group="experiment")
    image_size: int | None = setting(None, "image size of the model and its crops (None: the config's; another "
                                           "size builds the model at that size)", yaml=False, group="experiment")
    json_path: str | None = setting(None, "not used: the original's non-ImageNet datasets", yaml=False,
                                    schedule_only=True, group="experiment")
    save_path: str = setting("results/tokenizers/vq", "parent folder of experiments",
                             flags=("--save-path", "--results-dir"), yaml=False, schedule_only=True,
                             group="experiment")
    exp_name: str | None = setting(None, "experiment folder name (None: <exp-index>-<config stem>, or the stem)",
                                   flags=("--sub-exp-dir", "--exp-name"), yaml=False, schedule_only=True,
                                   group="experiment")
    optimizer: str = setting("AdamW", "optimiser of the generator and the discriminator", choices=["AdamW", "Adam"],
                             flags=(), group="optimisation")
    weight_decay_exclude: list | None = setting(None, "parameters whose name contains one of these get no weight "
                                                      "decay (None: 'norm' under FSDP, as the original; nothing "
                                                      "under DDP)", flags=(), group="optimisation")
    distill_loss: bool = setting(False, "semantic regularisation: decoder features aligned to the teacher's",
                                 flags=(), group="optimisation")
    distill_model: str = setting("dinov2-vit-b", "the semantic teacher", flags=(), group="optimisation")
    distill_model_path: str | None = setting(None, "not supported (give --teacher-weights)", flags=(),
                                             group="optimisation")
    vq_ckpt: str | None = setting(None, "start a new experiment from this checkpoint (model, and optimizer/"
                                        "discriminator/steps when present)", yaml=False, schedule_only=True,
                                  group="checkpoints")
    finetune: bool = setting(False, "with --vq-ckpt: load weights and optimisers but restart at step 0", yaml=False,
                             schedule_only=True, group="checkpoints")
    random_loss_nets: bool = setting(False, "LPIPS trunk, DINOv2 teacher and DINO-disc backbone with random weights "
                                            "(tests, offline)", yaml=False, group=LOSS_NETS)
    teacher_weights: str | None = setting(None, "local weights file for the DINOv2 teacher", yaml=False,
                                          schedule_only=True, group=LOSS_NETS)
    lpips_vgg_path: str | None = setting(None, "local LPIPS / VGG16 weights", yaml=False, schedule_only=True,
                                         group=LOSS_NETS)
    dino_disc_weights: str | None = setting(None, "local DINO ViT-S/16 weights for dinodisc", yaml=False,
                                            schedule_only=True, group=LOSS_NETS)


def version0_record(ckpt: dict, flags: dict) -> dict:
    """The settings a checkpoint of the version-0 layout recorded: its config's ``trainer`` section, overridden by the
    launch's flags (``flags``; None meant "from the YAML") and a few resolved run settings, under today's names."""
    stored = dict((ckpt.get("config") or {}).get("trainer") or {})
    if "max_steps" in stored:
        stored["iterations"] = stored.pop("max_steps")
    stored.update({k: v for k, v in flags.items() if v is not None})
    run = dict(ckpt.get("run_settings") or {})
    for old, new in (("precision", "mixed_precision"), ("seed", "global_seed")):
        if old in run:
            run[new] = run.pop(old)
    return {**stored, **{k: v for k, v in run.items() if v is not None}}


def build_parser(description: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tokenizer.train", description=description,
                                     formatter_class=HelpFormatter)
    add_flags(parser, TokenizerTrainSettings, SETTING_GROUPS)
    parser.add_argument("overrides", nargs="*", help="more dotted config overrides (section.key=value)")
    return parser


def parse_args(argv=None, description: str | None = None) -> argparse.Namespace:
    args = build_parser(description).parse_args(argv)
    args.config_overrides = list(getattr(args, "config_overrides", [])) + list(args.overrides)
    del args.overrides
    return args
