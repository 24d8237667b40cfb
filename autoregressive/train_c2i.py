"""Train a class-conditional GPT on GigaTok tokens: one process, torchrun DDP, or torchrun FSDP2.

    python -m autoregressive.train_c2i --tok-config configs/vq/VQ_tiny32.yaml --dataset imagenet_code \
        --code-path CODES --gpt-model GPT-tiny --sub-exp-dir run1 --iterations 1000 --global-batch-size 64
    GPUS=8 bash scripts/train_c2i.sh ...          # DDP; scripts/train_c2i_fsdp.sh adds --data-parallel sdp

Data: ``--dataset imagenet`` tokenises ``--data-path`` images on the fly with the tokenizer (``--tok-config`` +
``--vq-ckpt``), after the original's random-resized crop and flip; ``--dataset imagenet_code`` reads codes written
by ``autoregressive.extract_codes`` under ``--code-path``. The GPT's vocabulary and length come from the tokenizer
config (``codebook_size``, number of tokens).

One step: ``loss = CE(model(cond_idx=labels, idx=codes[:, :-1]), codes)`` under autocast, GradScaler (fp16 only),
clip, AdamW (weight decay on >= 2-D tensors only), EMA. Class labels are dropped to the null class with
``--class-dropout-prob`` inside the GPT's class embedding (train mode), which is what classifier-free guidance uses.

Outputs under ``<save-path>/<sub-exp-dir>/``: ``checkpoints/%07d.pt`` (``model``, ``optimizer``, ``steps``, every
setting as ``args``, ``gpt_config`` and ``tokenizer_config`` (so sampling needs only the checkpoint),
``format_version`` [+ ``ema``]), ``args.json``, ``log.txt``, ``metrics.jsonl``. With ``--lr-scheduler wsd`` the
checkpoints and logs after the constant phase go to ``cd_records/cd_fract_{f}_to_{T:07d}/`` as the original, so
cool-downs of different lengths branch from one constant run. The loop, checkpoints and exact resume are the trainer
base's (utils/trainer.py). ``--compile`` defaults to on for CUDA (as the original), off on CPU.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
from pathlib import Path

import torch
import torch.nn as nn

from autoregressive import train_options
from autoregressive.data import open_train_codes
from autoregressive.loading import fit_position_table, remap_class_table
from autoregressive.models.gpt import GPT_models
from tokenizer import read_tokenizer_config, tokenizer_info
from utils import training
from utils.config import ConfigError, to_plain
from utils.distributed import barrier
from utils.lr import LRSchedule
from utils.settings import resolve
from utils.train_data import AugmentedImageFolder
from utils.trainer import Trainer

EXIT_DIVERGED, TrainingDiverged = training.EXIT_DIVERGED, training.TrainingDiverged


def build_parser() -> argparse.ArgumentParser:
    return train_options.build_parser(description=__doc__)


def parse_args(argv=None) -> argparse.Namespace:
    return train_options.parse_args(argv, description=__doc__)


def gpt_config(settings: train_options.GPTTrainSettings, vocab_size: int, block_size: int) -> dict:
    """What ``autoregressive.load_gpt`` needs to rebuild the trained model (stored in every checkpoint)."""
    return {"gpt_model": settings.gpt_model, "vocab_size": vocab_size, "block_size": block_size,
            "num_classes": settings.num_classes, "cls_token_num": settings.cls_token_num,
            "class_dropout_prob": settings.class_dropout_prob, "use_qk_norm": settings.qk_norm,
            "gpt_2d": settings.gpt_2d}


def enable_grad_checkpointing(model: nn.Module) -> None:
    """Recompute each transformer block in the backward pass (non-reentrant; dropout masks are replayed)."""
    from torch.utils.checkpoint import checkpoint

    for block in model.layers:
        def forward(*args, _inner=block.forward, **kwargs):
            return checkpoint(_inner, *args, use_reentrant=False, **kwargs)
        block.forward = forward


def lr_for_step(schedule: LRSchedule, step: int, original_lag: bool = False) -> float:
    """LR of the update at 0-based ``step``: ``schedule(step)``; with ``original_lag`` as the original, which calls its
    scheduler after the update with the pre-increment count (update 0 at the base LR, update s at f(s - 1)) and,
    with const, never calls it (the base LR throughout, the warmup ignored)."""
    if original_lag and schedule.name == "const":
        return float(schedule.base_lr)
    return schedule.lr_for_update(step, lag=original_lag)


class GPTTrainer(Trainer):
    kind = "gpt"
    loss_key = "train_loss"
    compile_on_cuda_by_default = True  # as the original

    def __init__(self, args: argparse.Namespace):
        super().__init__(resolve(train_options.GPTTrainSettings, args))

    def build_data(self) -> torch.utils.data.Dataset:
        settings = self.settings
        tokenizer = tokenizer_info(settings.tok_config)
        self.image_size = settings.image_size or tokenizer["image_size"]
        if self.image_size != tokenizer["image_size"]:
            raise ConfigError(f"--image-size {self.image_size} does not match the tokenizer's "
                              f"{tokenizer['image_size']} ({settings.tok_config})")
        self.vocab_size, self.block_size = tokenizer["codebook_size"], tokenizer["num_tokens"]
        self.token_grid = tokenizer["token_grid"]  # a fine-tune's position table is resampled onto it
        self.settings = dataclasses.replace(settings, image_size=self.image_size)  # recorded resolved
        self.tokenizer = None
        if settings.dataset == "imagenet_code":
            self._check_code_settings(Path(settings.code_path))
            dataset = open_train_codes(settings.code_path, settings.code_dataset_name, self.image_size,
                                       seed=settings.global_seed)  # packed codes are auto-detected
            views = " (the ten_crop_105 folder is used with p=0.5)" if dataset.alt is not None else ""
            self.log(f"dataset: {len(dataset):,} {'packed' if dataset.packed else 'per-image'} codes in "
                     f"{settings.code_path}{views}")
            return dataset
        from tokenizer import load_tokenizer
        from utils.checkpoint import resolve_checkpoint
        dataset = AugmentedImageFolder(settings.data_path, self.image_size, seed=settings.global_seed)
        self.log(f"dataset: {len(dataset):,} images in {settings.data_path} ({len(dataset.classes)} classes)")
        if self.dist.is_main:
            resolve_checkpoint(settings.vq_ckpt)  # download once
        barrier()
        tokenizer_model = load_tokenizer(settings.tok_config, resolve_checkpoint(settings.vq_ckpt), device="cpu")
        self.tokenizer = tokenizer_model.encoder_only().to(self.device).eval().requires_grad_(False)
        return dataset

    def _check_code_settings(self, code_path: Path) -> None:
        stored_file = code_path / "extract_settings.json"
        if not stored_file.is_file():
            return
        stored = json.loads(stored_file.read_text())
        for key, mine in (("codebook_size", self.vocab_size), ("tokens", self.block_size),
                          ("image_size", self.image_size)):
            if key in stored and int(stored[key]) != mine:
                raise ConfigError(f"codes in {code_path} were extracted with {key}={stored[key]}, but the tokenizer "
                                  f"config {self.settings.tok_config} has {mine}")

    def build_models(self) -> nn.Module:
        settings = self.settings
        dropout_p = 0.0 if settings.drop_path_rate > 0 else settings.dropout_p
        config = gpt_config(settings, self.vocab_size, self.block_size)
        model = GPT_models[config.pop("gpt_model")](
            **config, model_type=settings.gpt_type, resid_dropout_p=dropout_p, ffn_dropout_p=dropout_p,
            drop_path_rate=settings.drop_path_rate, token_dropout_p=settings.token_dropout_p, rope=settings.rope,
            use_adaLN=settings.adaLN, use_simple_adaLN=settings.simple_adaLN)
        if settings.grad_ckpt:
            enable_grad_checkpointing(model)
        return model  # train mode (set by the base) enables the class-label dropout that CFG uses

    def fsdp_units(self, model: nn.Module) -> list[nn.Module]:
        return model.get_fsdp_wrap_module_list()

    def build_optimizers(self) -> None:
        settings = self.settings
        groups = training.param_groups(self.raw_model, settings.weight_decay, lambda _, param: param.dim() < 2)
        self.optimizer = torch.optim.AdamW(groups, lr=settings.lr, betas=(settings.beta1, settings.beta2),
                                           **({"fused": True} if self.device.type == "cuda" else {}))
        decay, plain = groups[0]["params"], groups[1]["params"] if len(groups) > 1 else []
        self.log(f"AdamW: weight decay {settings.weight_decay} on {len(decay)} tensors "
                 f"({sum(p.numel() for p in decay):,} elements), none on {len(plain)} "
                 f"({sum(p.numel() for p in plain):,})")

    def initial_checkpoint(self) -> tuple[Path, bool, bool] | None:
        start = self.settings.init_from
        if not start:
            return None
        from utils.checkpoint import resolve_checkpoint
        from utils.released import find_gpt
        released = find_gpt(start) if not Path(start).exists() else None
        return resolve_checkpoint(released.file if released else start), False, True

    def adapt_weights(self, weights: dict) -> dict:
        """Another class set: rows new or copied by --class-map, the starting GPT's null row kept. Another token
        count (a 2D tokenizer fine-tuned at another resolution): the position table resampled onto the new grid."""
        weights = remap_class_table(weights, self.raw_model, self.settings.num_classes, self.settings.class_map,
                                    self.log)
        return fit_position_table(weights, self.raw_model, self.token_grid, self.log)

    def lr_at(self, step: int) -> float:
        return lr_for_step(self.schedule, step, self.settings.original_lr_lag)

    # ----- checkpoints ------------------------------------------------------------------------------------------
    def model_record(self) -> dict:
        return {"gpt_config": gpt_config(self.settings, self.vocab_size, self.block_size),
                "tokenizer_config": to_plain(read_tokenizer_config(self.settings.tok_config))}

    def version0_settings(self, ckpt: dict) -> dict:
        stored = super().version0_settings(ckpt)
        if "lr_scheduler" in stored:
            stored["lr_scheduler"] = train_options.SCHEDULE_NAMES.get(stored["lr_scheduler"], stored["lr_scheduler"])
        return stored

    def record_inputs(self, folder: Path) -> None:
        shutil.copyfile(self.settings.tok_config, folder / Path(self.settings.tok_config).name)
        if self.settings.vq_ckpt:
            (folder / "vq_ckpt.txt").write_text(str(self.settings.vq_ckpt))

    # ----- one step ---------------------------------------------------------------------------------------------
    def _check_batch(self, codes: torch.Tensor, labels: torch.Tensor) -> None:
        if codes.shape[1] != self.block_size:
            raise ConfigError(f"codes have {codes.shape[1]} tokens but the tokenizer config has {self.block_size}")
        low, high = int(codes.min()), int(codes.max())
        if low < 0 or high >= self.vocab_size:
            raise ConfigError(f"code ids span [{low}, {high}], outside the vocabulary [0, {self.vocab_size})")
        if int(labels.min()) < 0 or int(labels.max()) >= self.settings.num_classes:
            raise ConfigError(f"class labels span [{int(labels.min())}, {int(labels.max())}], outside [0, "
                              f"{self.settings.num_classes}) (--num-classes)")

    def train_step(self, step: int, micro_batches: list[tuple]) -> dict:
        batch_size, accum = sum(len(batch[1]) for batch in micro_batches), len(micro_batches)
        total = torch.zeros((), device=self.device)
        for index, (inputs, labels, *_) in enumerate(micro_batches):
            inputs = inputs.to(self.device, non_blocking=True)
            if self.tokenizer is not None:
                with torch.no_grad():
                    inputs = self.tokenizer.encode_to_codes(inputs.float())
            codes, labels = inputs.reshape(inputs.shape[0], -1), labels.reshape(-1).to(self.device)
            if step == self.start_step and index == 0:
                self._check_batch(codes, labels)
            last = index == accum - 1 or not self.dist.distributed
            with training.no_sync(self.model, self.raw_model, self.fsdp, last=last):
                with training.autocast(self.device, self.amp_dtype):
                    _, loss = self.model(cond_idx=labels, idx=codes[:, :-1], targets=codes)
                part = loss * (codes.shape[0] / batch_size)
                self.scaler.scale(part).backward()
            total += part.detach().float()
        grad_norm = None
        if self.settings.max_grad_norm != 0.0:
            self.scaler.unscale_(self.optimizer)
            grad_norm = training.full_tensor(torch.nn.utils.clip_grad_norm_(self.raw_model.parameters(),
                                                                            self.settings.max_grad_norm))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.ema is not None:
            self.ema.update(self.raw_model)
        return {"train_loss": total, "grad_norm": grad_norm}

    def describe_window(self, step: int, record: dict) -> str:
        return (f"(step={step:07d}) Train Loss: {record['train_loss']:.4f}, Train Steps/Sec: "
                f"{record['steps_per_sec']:.2f}, lr: {record['lr']:.4e}"
                + (f", grad norm: {record['grad_norm']:.3f}" if "grad_norm" in record else ""))


def main(argv=None) -> dict:
    return training.run_trainer(GPTTrainer(parse_args(argv)))


if __name__ == "__main__":
    from utils.cli import run_cli
    run_cli(main, "train_c2i")
