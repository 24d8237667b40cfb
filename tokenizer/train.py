"""Train a GigaTok VQ tokenizer: one process, torchrun DDP, or torchrun FSDP2 (``--data-parallel fsdp``).

    python -m tokenizer.train --data-path DATA --model-config configs/vq/VQ_tiny32.yaml --iterations 1000 ...
    GPUS=8 bash scripts/train_vq.sh ...           # DDP (scripts/train_vq_fsdp.sh adds --data-parallel fsdp)

One step = one generator update (from ``loss.gen_start`` on) over the step's micro-batches, then one discriminator
update (from ``loss.disc_start`` on) on the same images and their reconstructions, in the original's order. Settings
(tokenizer/train_options.py): a flag wins over the config's ``trainer:`` section, which wins over the defaults. The
loop, checkpoints (with the tokenizer ``config``, discriminator, scalers and LeCam states) and exact resume are the
trainer base's (utils/trainer.py).
"""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn

from tokenizer import build_tokenizer, read_tokenizer_config, resolve_released, train_options
from tokenizer.losses import build_loss
from tokenizer.resolution import resample_position_tables, set_image_size
from utils import training
from utils.checkpoint import is_checkpoint_file, resolve_checkpoint, strip_prefixes
from utils.config import ConfigError, load_config, save_config, to_plain
from utils.distributed import allreduce_grads, any_rank, broadcast_module, gather_objects, is_distributed
from utils.lr import set_lr
from utils.settings import resolve
from utils.train_data import AugmentedImageFolder
from utils.trainer import Trainer

EXIT_DIVERGED, TrainingDiverged = training.EXIT_DIVERGED, training.TrainingDiverged
LOGGED_TERMS = ("rec_loss", "perceptual_loss", "vq_loss", "commit_loss", "entropy_loss", "feature_rec_loss",
                "proj_loss", "generator_adv_loss", "discriminator_loss", "codebook_usage")


def parse_args(argv=None) -> argparse.Namespace:
    return train_options.parse_args(argv, description=__doc__)


def _at_step(step: int) -> str:
    """Where a divergence happened, in the original's 1-based iteration count and this project's step index."""
    return f"at iteration {step + 1} (step index {step})"


class TokenizerTrainer(Trainer):
    kind = "tokenizer"
    weights_entries = ("model", "ema", "state_dict")
    find_unused_parameters = True

    def __init__(self, args: argparse.Namespace):
        config, self.init_weights = getattr(args, "model_config", None), None
        if getattr(args, "init_from", None) and config and is_checkpoint_file(args.init_from):
            self.init_weights = args.init_from  # weights for the given config
        elif getattr(args, "init_from", None):  # a release, a described checkpoint or a folder: weights and config
            init_config, self.init_weights = resolve_released(args.init_from, None)
            config = config or init_config
            args.model_config = getattr(args, "model_config", None) or args.init_from
        if config is None:
            raise ConfigError("give the tokenizer config (--model-config) or the weights to start from (--init-from)")
        self.config = read_tokenizer_config(config, args.config_overrides)
        if getattr(args, "image_size", None):  # explicit: the model is built at this size
            self.config = read_tokenizer_config(set_image_size(self.config, args.image_size))
        super().__init__(resolve(train_options.TokenizerTrainSettings, args, self.config.get("trainer"),
                                 source="trainer"))

    def experiment_name(self) -> str:
        settings, stem = self.settings, Path(self.settings.model_config).stem
        return settings.exp_name or (f"{settings.exp_index:03d}-{stem}" if settings.exp_index is not None else stem)

    def build_data(self) -> AugmentedImageFolder:
        self.image_size = self.settings.image_size or int(self.config.model.init_args.get("image_size", 256))
        self.settings = dataclasses.replace(self.settings, image_size=self.image_size)  # recorded resolved
        return AugmentedImageFolder(self.settings.data_path, self.image_size, seed=self.settings.global_seed)

    def build_models(self) -> nn.Module:
        settings = self.settings
        model = build_tokenizer(self.config)  # at --image-size when given (the config was set to it)
        self.loss = build_loss(self.config, pretrained=not settings.random_loss_nets, device=self.device,
                               teacher_weights=settings.teacher_weights, lpips_vgg_path=settings.lpips_vgg_path,
                               dino_disc_weights=settings.dino_disc_weights)
        broadcast_module(self.loss)  # discriminator init (and random-weight loss nets) identical on every rank
        self.loss.train()
        return model

    def fsdp_units(self, model: nn.Module) -> list[nn.Module]:
        return [*model.vit_encoder.transformer, *model.vit_decoder.transformer]

    def build_optimizers(self) -> None:
        settings = self.settings
        exclude = settings.weight_decay_exclude if settings.weight_decay_exclude is not None else \
            (["norm"] if self.fsdp else [])
        optimizer_class = {"AdamW": torch.optim.AdamW, "Adam": torch.optim.Adam}[settings.optimizer]
        common = {"lr": settings.lr, "betas": (settings.beta1, settings.beta2), "weight_decay": settings.weight_decay}
        groups = training.param_groups(self.raw_model, settings.weight_decay,
                                       lambda name, _: any(part in name for part in exclude))
        self.optimizer = optimizer_class(groups, **common,
                                         **({"fused": True} if self.fsdp and self.device.type == "cuda" else {}))
        self.optimizer_disc = optimizer_class(self.loss.discriminator.parameters(), **common)
        self.scaler_disc = training.grad_scaler(self.device, self.amp_dtype)  # the discriminator is not sharded

    # ----- checkpoints ------------------------------------------------------------------------------------------
    def model_record(self) -> dict:
        return {"config": to_plain(self.config)}

    def extra_state(self) -> dict:
        lecam = self.loss.lecam_ema
        lecam_states = gather_objects(lecam.state_dict() if lecam is not None else None)  # per rank, as trained
        return {"discriminator": {k: v.detach().cpu() for k, v in self.loss.discriminator.state_dict().items()},
                "optimizer_disc": self.optimizer_disc.state_dict(), "scaler_disc": self.scaler_disc.state_dict(),
                "lecam_states": lecam_states}

    def load_extra_state(self, ckpt: dict, path: Path, exact: bool) -> list[str]:
        loaded = []
        if "discriminator" in ckpt:
            try:
                self.loss.discriminator.load_state_dict(strip_prefixes(ckpt["discriminator"]))
                if "optimizer_disc" in ckpt:
                    self.optimizer_disc.load_state_dict(ckpt["optimizer_disc"])
                loaded += ["discriminator", "optimizer_disc"]
            except (RuntimeError, ValueError, KeyError) as exc:
                self.log(f"WARNING: discriminator state in {path} does not fit ({type(exc).__name__}); keeping a "
                         "fresh discriminator")
        if exact and ckpt.get("scaler_disc") and self.scaler_disc.is_enabled():
            self.scaler_disc.load_state_dict(ckpt["scaler_disc"])
        # LeCam EMAs per rank: version 1 "lecam_states", version 0 inside "rank_states"
        states = ckpt.get("lecam_states") or [r.get("lecam") for r in ckpt.get("rank_states") or []]
        if exact and self.loss.lecam_ema is not None and len(states) == self.dist.world_size and states[0]:
            self.loss.lecam_ema.load_state_dict(states[self.dist.rank])
        return loaded

    def initial_checkpoint(self) -> tuple[Path, bool, bool] | None:
        """--init-from (weights only, step 0), else --vq-ckpt (at its step unless --finetune), else the config's
        model.init_ckpt (weights and optimisers, step 0, as the original)."""
        if self.init_weights is not None:
            return resolve_checkpoint(self.init_weights), False, True
        start = self.settings.vq_ckpt or self.config.model.get("init_ckpt")
        if not start:
            return None
        return resolve_checkpoint(start), bool(self.settings.vq_ckpt) and not self.settings.finetune, False

    def adapt_weights(self, weights: dict) -> dict:
        """A fine-tune at another resolution: the grid position tables resampled to this model's grid."""
        return resample_position_tables(weights, self.raw_model, self.log)

    def config_changes(self, ckpt: dict) -> list[str]:
        """The model and loss sections (the trainer section is compared as settings)."""
        stored = {k: v for k, v in (ckpt.get("config") or {}).items() if k != "trainer"}
        current = {k: v for k, v in to_plain(self.config).items() if k != "trainer"}
        return training.changed_settings(stored, current) if stored else []

    def version0_settings(self, ckpt: dict) -> dict:
        return train_options.version0_record(ckpt, super().version0_settings(ckpt))

    def record_inputs(self, folder: Path) -> None:
        """config.yaml of the first segment stays; a resumed segment with another config writes its own beside it."""
        first = folder / "config.yaml"
        if not first.exists():
            save_config(self.config, first)
        elif to_plain(load_config(first)) != to_plain(self.config):
            save_config(self.config, folder / f"config.resume-{self.start_step:07d}.yaml")

    # ----- one step ---------------------------------------------------------------------------------------------
    def train_step(self, step: int, micro_batches: list[tuple]) -> dict:
        if is_distributed():  # as DDP's broadcast_buffers (the original's VQLoss; under FSDP the codebook usage too)
            for buffer in [*self.loss.discriminator.buffers(), *(self.raw_model.buffers() if self.fsdp else ())]:
                dist.broadcast(buffer, src=0)
        generator_terms, kept, grad_norm = self.generator_step(step, micro_batches)
        discriminator_terms = self.discriminator_step(step, kept)
        total = generator_terms.get("generator_loss", 0.0) + discriminator_terms.get("discriminator_loss", 0.0)
        return {"loss": total, **generator_terms, **discriminator_terms, "grad_norm": grad_norm}

    def generator_step(self, step: int, micro_batches: list[tuple]) -> tuple[dict, list, torch.Tensor]:
        """One generator update over the micro-batches (before ``gen_start`` the forward runs without an update);
        returns the mean logged terms, the images and reconstructions for the discriminator, and the grad norm."""
        loss_fn, accum, where = self.loss, len(micro_batches), _at_step(step)
        update, aux = loss_fn.gen_active(step), loss_fn.aux_active(step)
        extra = {"last_layer": self.raw_model.decoder.conv_out.weight} if loss_fn.use_adaptive_weight else {}
        kept, terms = [], {}
        for index, (images, *_) in enumerate(micro_batches):
            images = images.to(self.device, non_blocking=True)
            with training.no_sync(self.model, self.raw_model, self.fsdp, index == accum - 1), \
                    torch.set_grad_enabled(update):
                def forward(images=images):
                    out = self.model(images, rec_loss=aux, ret_inner_feat=loss_fn.distill_loss)
                    return (*loss_fn.generator_loss(out, images, step, **extra), out)
                loss, logs, outputs = training.checked(forward, f"generator loss {where}", self.device,
                                                       self.amp_dtype, self.last_checkpoint)
                if update:
                    self.scaler.scale(loss / accum).backward()
            reconstruction, direct = outputs[0]
            kept.append((images, reconstruction.detach(), direct.detach() if direct is not None else None))
            for key, value in logs.items():
                terms[key] = terms.get(key, 0.0) + value / accum
        grad_norm = torch.zeros((), device=self.device)
        if update:
            self.scaler.unscale_(self.optimizer)
            grad_norm = training.full_tensor(torch.nn.utils.clip_grad_norm_(
                self.raw_model.parameters(), self.settings.max_grad_norm or float("inf"))).float()
            if self.amp_dtype != torch.float16 and any_rank(~torch.isfinite(grad_norm), None, self.device):
                raise TrainingDiverged(f"non-finite generator gradient norm {where}; stopping. Last good checkpoint: "
                                       f"{self.last_checkpoint or 'none'}.\n  grad norm {grad_norm.item()} (loss "
                                       f"terms {terms})")
            self.scaler.step(self.optimizer)
            self.scaler.update()
            if self.ema is not None:
                self.ema.update(self.raw_model)
        return terms, kept, grad_norm

    def discriminator_step(self, step: int, kept: list) -> dict:
        loss_fn = self.loss
        if not loss_fn.disc_active(step):
            self.window_extras["lr_disc"] = 0.0
            return {}
        first = max(int(loss_fn.disc_start) - 1, 0)
        self.window_extras["lr_disc"] = set_lr(self.optimizer_disc, self.schedule.lr_for_update(
            step, lag=self.settings.original_lr_lag, first_update=first))
        self.optimizer_disc.zero_grad(set_to_none=True)
        terms, where = {}, _at_step(step)
        for images, reconstruction, direct in kept:
            def forward(x=images, r=reconstruction, d=direct):
                return loss_fn.discriminator_loss(x, r, step, direct_reconstructions=d)
            loss, logs = training.checked(forward, f"discriminator loss {where}", self.device, self.amp_dtype,
                                          self.last_checkpoint)
            if loss is not None:
                self.scaler_disc.scale(loss / len(kept)).backward()
            for key, value in logs.items():
                terms[key] = terms.get(key, 0.0) + value / len(kept)
        params = list(loss_fn.discriminator.parameters())
        allreduce_grads(params)
        self.scaler_disc.unscale_(self.optimizer_disc)
        if self.settings.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(params, self.settings.max_grad_norm)
        self.scaler_disc.step(self.optimizer_disc)
        self.scaler_disc.update()
        return terms

    def describe_window(self, step: int, record: dict) -> str:
        terms = " ".join(f"{k}={record[k]:.4f}" for k in LOGGED_TERMS if k in record)
        return (f"(step={step:07d}) Train Loss: {record['loss']:.4f}, Train Steps/Sec: {record['steps_per_sec']:.2f}, "
                f"LR: {record['lr']:.3e}, LR_disc: {record.get('lr_disc', 0.0):.3e}, Epoch: {record['epoch']} | "
                f"{terms}")


def main(argv=None) -> dict:
    return training.run_trainer(TokenizerTrainer(parse_args(argv)))


if __name__ == "__main__":
    from utils.cli import run_cli
    run_cli(main, "tokenizer.train")
