"""One spelling per flag across the drivers: every driver that reads a tokenizer config takes both --tok-config and
--model-config, and every driver that runs a model takes --precision {none,fp32,fp16,bf16}."""
from __future__ import annotations

import argparse
import importlib

import pytest

TOKENIZER_CONFIG = ["tokenizer.reconstruct", "tokenizer.train", "tokenizer.lin_probe", "autoregressive.extract_codes",
                    "autoregressive.check_codes", "autoregressive.train_c2i", "autoregressive.sample_c2i",
                    "autoregressive.val_loss", "autoregressive.lin_probe", "autoregressive.convert_checkpoint"]
PRECISION = ["tokenizer.reconstruct", "tokenizer.train", "tokenizer.lin_probe", "autoregressive.extract_codes",
             "autoregressive.train_c2i", "autoregressive.sample_c2i", "autoregressive.val_loss",
             "autoregressive.lin_probe"]


class _Caught(Exception):
    def __init__(self, parser: argparse.ArgumentParser):
        self.parser = parser


def driver_parser(module: str, monkeypatch) -> argparse.ArgumentParser:
    """The parser a driver builds in its parse_args (caught before it parses anything)."""
    def catch(self, *args, **kwargs):
        raise _Caught(self)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", catch)
    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", catch)
    mod = importlib.import_module(module)
    with pytest.raises(_Caught) as caught:
        (getattr(mod, "parse_args", None) or (lambda a: mod.build_parser().parse_args(a)))([])
    return caught.value.parser


@pytest.mark.parametrize("module", TOKENIZER_CONFIG)
def test_tokenizer_config_has_both_spellings(module, monkeypatch):
    actions = driver_parser(module, monkeypatch)._option_string_actions
    assert "--tok-config" in actions and "--model-config" in actions, module
    assert actions["--tok-config"] is actions["--model-config"], module


@pytest.mark.parametrize("module", PRECISION)
def test_precision_flag(module, monkeypatch):
    actions = driver_parser(module, monkeypatch)._option_string_actions
    assert "--precision" in actions, module
    assert set(actions["--precision"].choices) == {"none", "fp32", "fp16", "bf16"}, module
