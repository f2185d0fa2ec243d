"""The shared config walker: types, finite numbers, nested key paths, bounded messages; the three configs use it."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest

from efpn.config import ConfigError, ModelConfig, TrainConfig, from_mapping, load_train_config, read_yaml, short
from efpn.config.data import load_data_config, parse_data_config
from efpn.zoo import get_config


@dataclasses.dataclass(frozen=True)
class Inner:
    levels: tuple[str, ...] = ("p3",)
    weight: float = 1.0


@dataclasses.dataclass(frozen=True)
class Outer:
    name: str = "x"
    count: int = 1
    flag: bool = False
    mode: str | None = None
    inner: Inner = dataclasses.field(default_factory=Inner)


def test_builds_nested_dataclasses_with_tuples_and_widened_numbers() -> None:
    out = from_mapping(Outer, {"count": 3, "inner": {"levels": ["p2", "p3"], "weight": 2}}, "f.yaml")
    assert out == Outer(count=3, inner=Inner(levels=("p2", "p3"), weight=2.0))
    assert isinstance(out.inner.weight, float)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"count": "3"}, r"f\.yaml: 'count' must be an integer, got '3'"),
        ({"count": True}, r"'count' must be an integer, got True"),
        ({"flag": "yes"}, r"'flag' must be true or false"),
        ({"inner": {"weight": float("nan")}}, r"'inner\.weight' must be a finite number, got nan"),
        ({"inner": {"weight": math.inf}}, r"'inner\.weight' must be a finite number"),
        ({"inner": {"levels": "p3"}}, r"'inner\.levels' must be a list of strings"),
        ({"inner": {"colour": 1}}, r"unknown key\(s\) \['inner\.colour'\]; valid keys: inner\.levels, inner\.weight"),
        ({"inner": 5}, r"'inner' must be a mapping with keys levels, weight"),
        ({"speed": 1}, r"unknown key\(s\) \['speed'\]; valid keys: name, count, flag, mode, inner"),
    ],
)
def test_errors_name_the_file_the_key_and_what_is_accepted(data: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        from_mapping(Outer, data, "f.yaml")


def test_short_is_bounded_for_alias_expanded_values() -> None:
    # a "billion laughs" value: 9 levels of 10 references each -> 10^9 leaves if expanded
    value: list = ["lol"]
    for _ in range(9):
        value = [value] * 10
    text = short(value)
    assert len(text) <= 80
    with pytest.raises(ConfigError) as err:
        from_mapping(Outer, {"count": value}, "bomb.yaml")
    assert len(str(err.value)) < 300


def _bomb(key: str) -> str:
    """YAML whose ``key`` holds a "billion laughs" value: 9 levels of 9 aliases (9^9 leaves if expanded)."""
    levels = ['&l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    levels += [f"&l{i} [" + ",".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, 9)]
    return f"{key}: [{', '.join(levels)}]\n"


def test_yaml_bomb_under_an_accepted_key_is_refused_quickly(tmp_path: Path) -> None:
    recipe = tmp_path / "bomb.yaml"
    recipe.write_text("model: tiny_efpn_n\n" + _bomb("lr"))
    with pytest.raises(ConfigError, match=r"bomb\.yaml: 'lr' must be a finite number, got \[\["):
        load_train_config(recipe)
    data = tmp_path / "data.yaml"
    data.write_text("format: coco\n" + _bomb("val_fraction"))
    with pytest.raises(ConfigError, match=r"data\.yaml: 'val_fraction' must be a finite number or null"):
        load_data_config(data)


def test_read_yaml_refuses_huge_and_non_utf8_files(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    big.write_bytes(b"# " + b"x" * (2 << 20))
    with pytest.raises(ConfigError, match="at most"):
        read_yaml(big, "data YAML")
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"format: \xff\xfe\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        read_yaml(bad, "data YAML")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_yaml(tmp_path / "missing.yaml", "data YAML")


def test_model_config_round_trip_and_clear_errors() -> None:
    cfg = get_config("efpn_n", num_classes=3)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    broken = cfg.to_dict()
    broken["head"]["assigner"] = "hungarian"
    with pytest.raises(ConfigError, match=r"card\.json: 'head\.assigner' must be one of 'maxiou', 'atss'"):
        ModelConfig.from_dict(broken, "card.json")


def test_train_and_data_configs_go_through_the_walker(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: tiny_efpn_n\nepochs: 2.5\n")
    with pytest.raises(ConfigError, match=r"r\.yaml: 'epochs' must be an integer, got 2\.5"):
        load_train_config(recipe)
    assert TrainConfig(model="tiny_efpn_n").epochs == 100
    with pytest.raises(ConfigError, match=r"data\.yaml: 'val_fraction' must be a finite number or null, got 'half'"):
        parse_data_config({"format": "coco", "val_fraction": "half"}, tmp_path, tmp_path / "data.yaml")


def test_a_class_name_longer_than_a_label_is_refused() -> None:
    """A hand-edited card with a 100,000-character class name loaded, and that name filled every message, chart and
    table that quoted it."""
    from efpn.config.model import MAX_CLASS_NAME_CHARS, ModelConfig

    ok = ModelConfig(name="m", num_classes=2, class_names=("ship", "x" * MAX_CLASS_NAME_CHARS))
    assert ok.class_names[1] == "x" * MAX_CLASS_NAME_CHARS
    with pytest.raises(ValueError, match=r"at most 256 characters, got one of 100,000") as e:
        ModelConfig(name="m", num_classes=2, class_names=("ship", "x" * 100_000))
    assert len(str(e.value)) < 200
