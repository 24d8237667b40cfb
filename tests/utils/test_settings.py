"""utils.settings: one field per setting gives its flag, its YAML key and type, its value and its resume check."""
from __future__ import annotations

import argparse
from dataclasses import dataclass

import pytest

from utils.config import ConfigError
from utils.settings import add_flags, as_record, resolve, resume_changes, section_keys, setting


@dataclass
class Example:
    lr: float = setting(1e-4, "learning rate")
    steps: int | None = setting(None, "total steps", flags=("--steps", "--max-steps"), yaml="max_steps",
                                schedule_only=True)
    ema: bool = setting(False, "keep an EMA")
    exclude: list | None = setting(None, "names without decay", flags=())
    path: str | None = setting(None, "a file", yaml=False, required=True)


def _parse(argv: list[str], cls=Example) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_flags(parser, cls)
    return parser.parse_args(argv)


def test_flag_wins_over_yaml_which_wins_over_the_default():
    assert resolve(Example, _parse(["--path", "p"])).lr == 1e-4
    assert resolve(Example, _parse(["--path", "p"]), {"lr": "5e-3"}).lr == 5e-3  # YAML's 5e-3 string
    settings = resolve(Example, _parse(["--path", "p", "--lr", "2e-2", "--no-ema", "--max-steps", "9"]),
                       {"lr": 1.0, "ema": True, "max_steps": 3, "exclude": ["norm"]})
    assert (settings.lr, settings.ema, settings.steps, settings.exclude) == (2e-2, False, 9, ["norm"])
    assert section_keys(Example) == {"lr", "max_steps", "ema", "exclude"}


def test_bad_input_is_one_clear_error():
    with pytest.raises(ConfigError, match=r"unknown key\(s\) in trainer: \['lrr'\]"):
        resolve(Example, _parse(["--path", "p"]), {"lrr": 1.0}, source="trainer")
    with pytest.raises(ConfigError, match="trainer.ema must be bool"):
        resolve(Example, _parse(["--path", "p"]), {"ema": "yes"}, source="trainer")
    with pytest.raises(ConfigError, match="--path is required"):
        resolve(Example, _parse([]))
    with pytest.raises(ConfigError, match="path"):
        resolve(Example, _parse(["--path", "p"]), {"path": "x"})  # not a YAML key


def test_help_shows_the_real_default_and_unset_flags_leave_no_value():
    parser = argparse.ArgumentParser()
    add_flags(parser, Example)
    text = parser.format_help()
    assert "learning rate (default: 0.0001)" in text and "--max-steps" in text and "--exclude" not in text
    assert not hasattr(parser.parse_args([]), "lr")


def test_resume_check_is_fail_closed():
    settings = resolve(Example, {"path": "p", "lr": 1e-3, "steps": 10})
    record = as_record(settings)
    assert resume_changes(record, settings) == []
    assert resume_changes({**record, "steps": 99}, settings) == []  # schedule-only
    assert resume_changes({**record, "lr": 1e-2}, settings) == ["lr: 0.01 -> 0.001"]
    # a setting the checkpoint predates is compared with its default (here it differs: reported) ...
    older = {k: v for k, v in record.items() if k != "lr"}
    assert resume_changes(older, settings) == ["lr: 0.0001 -> 0.001"]
    # ... unless the record is of the version-0 layout, which kept only some settings
    assert resume_changes(older, settings, compare_missing=False) == []


def test_a_new_setting_is_one_field():
    @dataclass
    class Extended(Example):
        warmup: int = setting(0, "warmup steps")

    settings = resolve(Extended, _parse(["--path", "p", "--warmup", "5"], Extended), {"warmup": 2})
    assert settings.warmup == 5 and "warmup" in section_keys(Extended)
    assert resume_changes(as_record(resolve(Extended, {"path": "p"})), settings) == ["warmup: 0 -> 5"]
