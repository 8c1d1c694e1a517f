import argparse
import dataclasses
import json
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import pytest

from vpp.data.config import Config, ConfigError, add_config_arguments, config_field, config_from_arguments


@dataclass
class Inner(Config):
    """A nested config."""

    width: int = config_field(4, help="a width")
    kernel: tuple[int, int] = config_field((3, 3), help="a fixed-length tuple")

    def validate(self) -> None:
        if self.width < 1:
            raise ConfigError(f"inner.width={self.width}; expected >= 1")


@dataclass
class Outer(Config):
    """A config with every kind of field."""

    name: str = config_field(help="required")
    inner: Inner = config_field(default_factory=Inner, help="nested")
    blocks: tuple[int, ...] | None = config_field(None, help="variable-length tuple or None")
    mode: Literal["a", "b"] = config_field("a", help="a choice")
    rate: float = config_field(0.5, help="a float")
    flag: bool = config_field(False, help="a switch")
    extra: dict[str, Any] = config_field(default_factory=dict, help="free-form")
    names: list[str] = config_field(default_factory=list, help="a list")
    label: str = config_field("none", help="renamed from 'tag'")

    renamed_keys: ClassVar[dict[str, str]] = {"tag": "label"}

    def validate(self) -> None:
        if self.blocks is not None and len(self.blocks) > self.inner.width:
            raise ConfigError(f"blocks={self.blocks}; expected at most inner.width={self.inner.width}")


@Outer.register_preset("small")
def _small() -> Outer:
    return Outer(name="small", inner=Inner(width=2), extra={"a": 1, "b": {"c": 2}})


def test_json_round_trip_keeps_nested_configs_and_tuples(tmp_path):
    config = Outer(name="x", inner={"width": 6, "kernel": [5, 1]}, blocks=[0, 2], rate=1, extra={"k": [1, 2]})
    assert config.inner == Inner(width=6, kernel=(5, 1)) and config.blocks == (0, 2)
    assert isinstance(config.rate, float)
    path = config.save(tmp_path / "sub" / "outer.json")
    assert json.loads(path.read_text())["inner"]["kernel"] == [5, 1]
    assert Outer.load(path) == config
    assert Outer.from_dict(config.to_dict()) == config


def test_unknown_and_missing_keys_name_the_key_and_the_class(tmp_path):
    data = Outer(name="x").to_dict()
    with pytest.raises(ConfigError, match="unknown key 'depth' for Outer"):
        Outer.from_dict({**data, "depth": 3})
    with pytest.raises(ConfigError, match="unknown key 'height' for Inner"):
        Outer.from_dict({**data, "inner": {"height": 3}})
    with pytest.raises(ConfigError, match="missing key 'name' for Outer"):
        Outer.from_dict({"rate": 0.1})
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match="is not JSON"):
        Outer.load(tmp_path / "bad.json")
    with pytest.raises(FileNotFoundError, match="no Outer file"):
        Outer.load(tmp_path / "missing.json")
    # an older key spelling is read as the field it became
    old = {**data, "tag": "old"}
    del old["label"]
    assert Outer.from_dict(old).label == "old"


@pytest.mark.parametrize(
    "change,message",
    [
        ({"mode": "c"}, r"Outer.mode='c'; expected one of \['a', 'b'\]"),
        ({"rate": "fast"}, "Outer.rate='fast'; expected a number"),
        ({"flag": 1}, "Outer.flag=1; expected true or false"),
        ({"blocks": [0, "1"]}, r"Outer.blocks=\[0, '1'\]; expected"),
        ({"inner": {"kernel": [1, 2, 3]}}, r"Inner.kernel=\[1, 2, 3\]; expected 2 values"),
        ({"inner": {"width": 2.5}}, "Inner.width=2.5; expected an integer"),
        ({"names": "abc"}, "Outer.names='abc'; expected a list"),
    ],
)
def test_values_of_the_wrong_type_are_refused(change, message):
    with pytest.raises(ConfigError, match=message):
        Outer.from_dict({**Outer(name="x").to_dict(), **change})


def test_validate_runs_after_construction_load_and_replace_nested_first():
    with pytest.raises(ConfigError, match=r"inner\.width=0"):
        Outer.from_dict({"name": "x", "inner": {"width": 0}})
    with pytest.raises(ConfigError, match=r"blocks=\(0, 1, 2\); expected at most inner.width=2"):
        Outer(name="x", inner=Inner(width=2), blocks=(0, 1, 2))
    config = Outer(name="x")
    config.inner.width = 0  # a nested config changed in place is checked again with its parent
    with pytest.raises(ConfigError, match=r"inner\.width=0"):
        dataclasses.replace(config, rate=0.1)


def test_presets_with_overrides_update_only_what_they_name():
    assert Outer.preset_names() == ("small",)
    base = Outer.preset("small")
    assert base.inner.width == 2 and base.extra == {"a": 1, "b": {"c": 2}}
    changed = Outer.preset("small", inner={"kernel": [1, 1]}, extra={"b": {"d": 3}}, rate=0.25)
    assert changed.inner == Inner(width=2, kernel=(1, 1))
    assert changed.extra == {"a": 1, "b": {"c": 2, "d": 3}} and changed.rate == 0.25
    assert Outer.preset("small") == base  # the registry builds a fresh config every time
    with pytest.raises(ConfigError, match=r"unknown preset 'huge' for Outer; expected one of \('small',\)"):
        Outer.preset("huge")
    with pytest.raises(ConfigError, match="registered twice"):
        Outer.register_preset("small")(_small)
    with pytest.raises(ConfigError, match="unknown key 'depth' for Outer"):
        Outer.preset("small", depth=3)


def test_every_field_here_has_its_help():
    for cls in (Inner, Outer):
        assert all(cls.field_help().values()), cls


@dataclass
class Flags(Config):
    """Options as a training CLI sees them."""

    output_dir: str = config_field(help="where to write")
    max_steps: int = config_field(10, help="steps")
    betas: tuple[float, float] = config_field((0.9, 0.99), help="two numbers")
    schedule: Literal["constant", "cosine"] = config_field("constant", help="schedule")
    clip: float | None = config_field(None, help="optional")
    checkpointing: bool = config_field(False, help="a switch")
    seed: int = config_field(0, help="given elsewhere")


def parse(argv: list[str], **kwargs) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, Flags, **kwargs)
    return parser.parse_args(argv)


def test_cli_options_come_from_the_fields():
    args = parse(
        [
            "--output",
            "run",
            "--steps",
            "3",
            "--betas",
            "0.5",
            "0.6",
            "--schedule",
            "cosine",
            "--clip",
            "2",
            "--checkpointing",
        ],
        aliases={"output_dir": "--output", "max_steps": ["--steps"]},
    )
    config = config_from_arguments(Flags, args)
    assert config == Flags(
        output_dir="run", max_steps=3, betas=(0.5, 0.6), schedule="cosine", clip=2.0, checkpointing=True
    )
    # every field has its long spelling too, and the defaults are the config's
    args = parse(["--output-dir", "run", "--max-steps", "4", "--no-checkpointing"])
    assert config_from_arguments(Flags, args) == Flags(output_dir="run", max_steps=4)


def test_cli_options_check_choices_required_fields_and_excluded_values(capsys):
    with pytest.raises(SystemExit):
        parse(["--output-dir", "run", "--schedule", "linear"])
    assert "invalid choice: 'linear'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse([])
    assert "--output-dir" in capsys.readouterr().err
    args = parse(["--output-dir", "run"], exclude=["seed"], defaults={"max_steps": 7})
    assert not hasattr(args, "seed")
    assert config_from_arguments(Flags, args, seed=9) == Flags(output_dir="run", max_steps=7, seed=9)
    with pytest.raises(ConfigError, match=r"Flags\.max_steps='x'; expected an integer"):
        config_from_arguments(Flags, args, max_steps="x")


def test_help_lists_each_fields_documentation(capsys):
    with pytest.raises(SystemExit):
        parse(["--help"])
    text = capsys.readouterr().out
    assert "two numbers (default: (0.9, 0.99))" in text and "a switch (default: off)" in text


@dataclass(frozen=True)
class Frozen(Config):
    """An immutable config."""

    sizes: tuple[int, ...] = config_field((1, 2), help="sizes")


def test_frozen_configs_convert_their_values_too():
    config = Frozen.from_dict({"sizes": [3, 4]})
    assert config.sizes == (3, 4) and hash(config) == hash(Frozen(sizes=(3, 4)))
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.sizes = (5,)


@dataclasses.dataclass
class Named(Config):
    width: int = config_field(1, help="a size")
    preset_name: str = config_field("custom", help="the preset this config was built from")


@Named.register_preset("wide")
def _wide() -> Named:
    return Named(width=8)


def test_a_preset_records_its_name_where_the_config_has_a_field_for_it():
    assert Named.preset("wide") == Named(width=8, preset_name="wide")
    assert Named.preset("wide", width=4).preset_name == "wide"
    assert Named.preset("wide", preset_name="mine").preset_name == "mine"
    assert Named(width=8).preset_name == "custom"  # built by hand: no preset to record
    assert not hasattr(Outer.preset("small"), "preset_name")
