"""utils/config.py: YAML loading, dotted overrides (typed, '+' to add), unknown-key rejection, save round-trip."""
from __future__ import annotations

import pytest
from omegaconf import DictConfig

from utils.config import ConfigError, check_keys, load_config, save_config, to_plain

from testlib import REPO  # noqa: F401  (puts the repo root on sys.path)

YAML = """\
model:
  name: tiny
  width: 8
  rot: true
train:
  lr: 0.001
  epochs: 2
  tags: [a, b]
"""


@pytest.fixture
def cfg_path(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text(YAML)
    return path


def test_load_without_overrides(cfg_path):
    cfg = load_config(cfg_path)
    assert isinstance(cfg, DictConfig)
    assert to_plain(cfg) == {"model": {"name": "tiny", "width": 8, "rot": True},
                             "train": {"lr": 0.001, "epochs": 2, "tags": ["a", "b"]}}


def test_dotted_overrides_change_values_with_parsed_types(cfg_path):
    cfg = load_config(str(cfg_path), ["model.width=3", "model.rot=false", "model.name=big", "train.tags=[x, 1]",
                                      "train.lr=0.5", "train.epochs=null"])
    assert cfg.model.width == 3 and type(cfg.model.width) is int
    assert cfg.model.rot is False
    assert cfg.model.name == "big"
    assert list(cfg.train.tags) == ["x", 1]
    assert cfg.train.lr == 0.5 and isinstance(cfg.train.lr, float)
    assert cfg.train.epochs is None
    # untouched keys are kept
    assert cfg.model.name == "big" and cfg.train.lr == 0.5


def test_override_value_may_contain_equals_sign(cfg_path):
    cfg = load_config(cfg_path, ["model.name=a=b"])
    assert cfg.model.name == "a=b"


def test_plus_prefix_adds_new_nested_key(cfg_path):
    cfg = load_config(cfg_path, ["+new.key=1", "+model.extra=hello"])
    assert cfg.new.key == 1
    assert cfg.model.extra == "hello"
    assert cfg.model.width == 8


@pytest.mark.parametrize("override,key", [("model.widht=3", "model.widht"), ("nosuch.key=1", "nosuch.key"),
                                          ("model.width.sub=1", "model.width.sub")])
def test_unknown_dotted_key_is_rejected_by_name(cfg_path, override, key):
    with pytest.raises(ConfigError, match=repr(key).replace(".", r"\.")) as info:
        load_config(cfg_path, [override])
    assert "+" in str(info.value)  # tells the user how to add a key on purpose


def test_override_without_equals_is_rejected(cfg_path):
    with pytest.raises(ConfigError, match="model.width"):
        load_config(cfg_path, ["model.width"])


def test_missing_file_is_a_config_error(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_config(missing)


def test_non_mapping_top_level_is_rejected(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(path)


def test_dict_input_is_copied_not_mutated():
    src = {"a": {"b": 1}}
    cfg = load_config(src, ["a.b=2"])
    assert cfg.a.b == 2
    assert src == {"a": {"b": 1}}
    again = load_config(cfg, ["a.b=5"])
    assert again.a.b == 5 and cfg.a.b == 2


def test_check_keys_names_full_dotted_key():
    check_keys({"x": 1, "y": 2}, ["x", "y", "z"], "model")
    with pytest.raises(ConfigError, match=r"'model\.typo'"):
        check_keys({"x": 1, "typo": 2}, ["x", "y"], "model")


def test_save_config_round_trips(cfg_path, tmp_path):
    cfg = load_config(cfg_path, ["model.width=16", "+extra.flag=true"])
    out = save_config(cfg, tmp_path / "sub" / "saved.yaml")
    assert out == tmp_path / "sub" / "saved.yaml" and out.is_file()
    assert to_plain(load_config(out)) == to_plain(cfg)
    # a plain dict is accepted too
    out2 = save_config({"a": {"b": [1, 2]}}, tmp_path / "plain.yaml")
    assert to_plain(load_config(out2)) == {"a": {"b": [1, 2]}}


def test_save_config_resolves_interpolations(tmp_path):
    src = tmp_path / "interp.yaml"
    src.write_text("base: 4\nmodel:\n  width: ${base}\n")
    out = save_config(load_config(src, ["base=7"]), tmp_path / "resolved.yaml")
    text = out.read_text()
    assert "${" not in text
    assert to_plain(load_config(out)) == {"base": 7, "model": {"width": 7}}
