"""The typed config: YAML + dotted overrides, type checks, unknown keys with a suggestion."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmforge.cli import main
from lmforge.config import Config, apply_override, dump_yaml, load_config, valid_keys
from lmforge.errors import ConfigError


def test_defaults_roundtrip_through_yaml(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(dump_yaml(Config()))
    assert load_config(path) == Config()


def test_yaml_then_overrides_in_order(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  quality:\n    min_chars: 10\ntokenizer:\n  kind: char\n")
    cfg = load_config(path, ["data.quality.min_chars=50", "train.optim.betas=[0.9, 0.99]", "data.inputs=a.txt"])
    assert cfg.data.quality.min_chars == 50
    assert cfg.tokenizer.kind == "char"
    assert cfg.train.optim.betas == [0.9, 0.99]
    assert cfg.data.inputs == ["a.txt"]


def test_override_null_and_float_coercion() -> None:
    cfg = load_config(None, ["data.quality.min_chars=null", "train.optim.lr=3e-4", "train.optim.weight_decay=0"])
    assert cfg.data.quality.min_chars is None
    assert cfg.train.optim.lr == pytest.approx(3e-4)
    assert isinstance(cfg.train.optim.weight_decay, float)


@pytest.mark.parametrize(
    ("key", "suggestion"),
    [
        ("data.quality.min_char", "data.quality.min_chars"),
        ("data.min_chars", "data.quality.min_chars"),
        ("tokenizer.vocab", "tokenizer.vocab_size"),
        ("train.lr", "train.optim.lr"),
    ],
)
def test_unknown_key_names_closest(key: str, suggestion: str) -> None:
    with pytest.raises(ConfigError, match=f"unknown config key '{key}' \\(did you mean '{suggestion}'\\?\\)"):
        load_config(None, [f"{key}=1"])


def test_unknown_key_in_file_names_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("tokenizer:\n  vocab_sise: 100\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: unknown config key 'tokenizer\.vocab_sise'.*vocab_size"):
        load_config(path)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.quality.min_chars=abc", "expected int or null"),
        ("tokenizer.kind=wordpiece", "expected one of"),
        ("data.normalize.enabled=maybe", "expected bool"),
        ("data.quality=5", "expected a mapping"),
        ("nodot=1", "not of the form|unknown config key"),
    ],
)
def test_type_errors_name_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        cfg = Config()
        key, _, value = override.partition("=")
        import yaml

        apply_override(cfg, key, yaml.safe_load(value))


def test_invalid_yaml_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("data:\n  inputs: [a, b\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml:\d+"):
        load_config(path)


def test_valid_keys_cover_every_section() -> None:
    keys = set(valid_keys())
    for key in ("run.seed", "data.dedup.num_perm", "tokenizer.vocab_size", "model.n_layer", "train.optim.lr"):
        assert key in keys


def test_cli_config_show(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  n_layer: 7\n")
    assert main(["config", "show", str(path), "model.n_embd=96"]) == 0
    out = capsys.readouterr().out
    assert "n_layer: 7" in out and "n_embd: 96" in out
    assert load_config(None).model.n_layer != 7  # the file, not the default, set it


def test_cli_config_typo_is_one_line_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "show", "data.quality.min_char=5"]) == 2
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0
    assert err.startswith("error: ") and "data.quality.min_chars" in err


def test_cli_missing_config_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["prepare", "--config", str(tmp_path / "nope.yaml"), "x.txt"]) == 2
    assert "config file not found" in capsys.readouterr().err
