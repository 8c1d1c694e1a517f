"""The one configuration mechanism of vpp: JSON-backed, validated, documented dataclasses.

Every config of every package derives from :class:`Config` and is decorated with ``@dataclass``.
It lives here, in the torch-free package every other one imports, so that the model packages
(``vpp.tvp``, ``vpp.policy``) share one implementation and one :class:`ConfigError`.

What a subclass gets:

- ``to_dict`` / ``from_dict`` / ``save`` / ``load`` (JSON), with nested configs, tuples, lists,
  ``Literal`` choices and ``X | None`` converted and type-checked from their annotations; an
  unknown or missing key is a :class:`ConfigError` naming the key and the class.
- ``validate()``: the one place a config checks its values; it runs after every construction,
  load and ``dataclasses.replace``, nested configs first.
- ``preset(name, **overrides)``: named built-in configs registered with :meth:`Config.register_preset`.
- Documentation: every field is declared with :func:`config_field`, whose ``help`` the training
  CLIs turn into option help (:func:`add_config_arguments`).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar, Union

C = TypeVar("C", bound="Config")


class ConfigError(ValueError):
    """A configuration value is missing, unknown, of the wrong type, or inconsistent."""


def config_field(
    default: Any = dataclasses.MISSING, *, help: str, default_factory: Any = dataclasses.MISSING
) -> Any:
    """A dataclass field with its documentation (``help``), which every config field must have."""
    return dataclasses.field(default=default, default_factory=default_factory, metadata={"help": help})


class Config:
    """Base of every config dataclass; see the module docstring for what it provides."""

    _presets: ClassVar[dict[str, Callable[[], Config]]]
    # Keys that files written before a field's rename still hold: {old name: field name}.
    renamed_keys: ClassVar[Mapping[str, str]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._presets = {}

    def __post_init__(self) -> None:
        hints = _type_hints(type(self))
        for f in dataclasses.fields(self):
            # object.__setattr__: frozen dataclasses convert their values too
            object.__setattr__(
                self,
                f.name,
                _convert(getattr(self, f.name), hints[f.name], f"{type(self).__name__}.{f.name}"),
            )
        self.check()

    def validate(self) -> None:
        """Raises :class:`ConfigError` for an out-of-range or inconsistent value (override this)."""

    def check(self) -> None:
        """Validates the nested configs, then this one."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Config):
                value.check()
        self.validate()

    # -- JSON ---------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types: nested configs as dicts, tuples as lists."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls: type[C], data: Mapping[str, Any]) -> C:
        if not isinstance(data, Mapping):
            raise ConfigError(f"{cls.__name__}: got {type(data).__name__} {data!r}; expected a JSON object")
        data = {cls.renamed_keys.get(key, key): value for key, value in data.items()}
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ConfigError(
                f"unknown key {unknown[0]!r} for {cls.__name__} (all unknown: {unknown}); known keys: {names}"
            )
        required = [
            f.name for f in dataclasses.fields(cls) if f.default is f.default_factory is dataclasses.MISSING
        ]
        missing = [name for name in required if name not in data]
        if missing:
            raise ConfigError(f"missing key {missing[0]!r} for {cls.__name__} (all missing: {missing})")
        return cls(**data)

    def save(self, path: str | Path) -> Path:
        """Writes ``to_dict()`` as JSON to the file ``path``."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        return path

    @classmethod
    def load(cls: type[C], path: str | Path) -> C:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no {cls.__name__} file at {path}")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ConfigError(f"{path} is not JSON ({error}); expected a {cls.__name__}") from error
        return cls.from_dict(data)

    # -- presets ------------------------------------------------------------------------------

    @classmethod
    def register_preset(cls, name: str) -> Callable[[Callable[[], C]], Callable[[], C]]:
        """Decorator: ``@TVPConfig.register_preset("tiny")`` on a function returning the config."""

        def register(build: Callable[[], C]) -> Callable[[], C]:
            if name in cls._presets:
                raise ConfigError(f"preset {name!r} of {cls.__name__} is registered twice")
            cls._presets[name] = build
            return build

        return register

    @classmethod
    def preset_names(cls) -> tuple[str, ...]:
        return tuple(cls._presets)

    @classmethod
    def preset(cls: type[C], name: str, **overrides: Any) -> C:
        """The built-in config ``name``; ``overrides`` replace fields, and a dict given for a nested
        config or dict field updates only the keys it names (``dit={"chunk": 4}``). A config class
        with a ``preset_name`` field gets ``name`` recorded there."""
        if name not in cls._presets:
            raise ConfigError(
                f"unknown preset {name!r} for {cls.__name__}; expected one of {cls.preset_names()}"
            )
        config = cls._presets[name]()
        if "preset_name" in {f.name for f in dataclasses.fields(cls)}:
            # the record of where a config came from is written here, not in each preset function
            config = dataclasses.replace(config, preset_name=name)
        if not overrides:
            return config
        return cls.from_dict(_merge(config.to_dict(), _plain(overrides)))

    @classmethod
    def field_help(cls) -> dict[str, str]:
        """Each field's documentation; a field declared without :func:`config_field` has none."""
        return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    # resolves the string annotations of ``from __future__ import annotations`` modules
    return typing.get_type_hints(cls)


def _merge(base: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(dict(merged[key]), value)
        else:
            merged[key] = value
    return merged


def _plain(value: Any) -> Any:
    if isinstance(value, Config):
        return value.to_dict()
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _convert(value: Any, hint: Any, where: str) -> Any:
    """``value`` as the annotated type ``hint`` (JSON lists -> tuples, dicts -> nested configs),
    or a :class:`ConfigError` naming ``where`` (Class.field[index]...)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for option in (a for a in args if a is not type(None)):
            try:
                return _convert(value, option, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}={value!r}; expected {_describe(hint)}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}={value!r}; expected one of {list(args)}")
        return value
    if isinstance(hint, type) and issubclass(hint, Config):
        if isinstance(value, hint):
            return value
        if isinstance(value, Mapping):
            return hint.from_dict(value)
        raise ConfigError(f"{where}={value!r}; expected a {hint.__name__} or its dict")
    if origin in (tuple, list):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}={value!r}; expected {_describe(hint)}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{where}={value!r}; expected {len(args)} values ({_describe(hint)})")
            return tuple(
                _convert(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True))
            )
        item = args[0] if args else Any
        converted = [_convert(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(converted) if origin is tuple else converted
    if origin is dict or hint is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}={value!r}; expected a dict")
        item = args[1] if args else Any
        return {k: _convert(v, item, f"{where}[{k!r}]") for k, v in value.items()}
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}={value!r}; expected true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}={value!r}; expected an integer")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}={value!r}; expected a number")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}={value!r}; expected a string")
        return value
    raise ConfigError(f"{where}: the annotation {hint!r} is not one a Config field can have")


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is Literal:
        return f"one of {list(args)}"
    if hint is type(None):
        return "null"
    if origin is tuple:
        return "a list of " + (f"{len(args)} values" if args and args[-1] is not Ellipsis else "values")
    if origin is list:
        return "a list"
    return getattr(hint, "__name__", str(hint))


# -- command-line options from the fields ----------------------------------------------------


def add_config_arguments(
    parser: argparse.ArgumentParser,
    cls: type[Config],
    *,
    exclude: Iterable[str] = (),
    aliases: Mapping[str, str | Iterable[str]] | None = None,
    defaults: Mapping[str, Any] | None = None,
    dest_prefix: str = "",
) -> None:
    """One option per (top-level, non-nested) field of ``cls``: ``--field-name`` with the field's
    help, its type, ``Literal`` choices, ``X | None``, tuples (``nargs``) and booleans
    (``--flag`` / ``--no-flag``). ``aliases`` adds older spellings (``{"max_steps": "--steps"}``),
    ``defaults`` replaces a field's default on the command line only. A field without a default
    becomes a required option. Values land in ``args.<dest_prefix><field>``;
    :func:`config_from_arguments` reads them back."""
    hints = _type_hints(cls)
    aliases = dict(aliases or {})
    defaults = dict(defaults or {})
    skipped = set(exclude)
    group = parser.add_argument_group(f"{cls.__name__} options")
    for f in dataclasses.fields(cls):
        if f.name in skipped:
            continue
        hint = hints[f.name]
        flags = [f"--{f.name.replace('_', '-')}"]
        extra = aliases.get(f.name, ())
        flags += [extra] if isinstance(extra, str) else list(extra)
        if f.name in defaults:
            default = defaults[f.name]
        elif f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = dataclasses.MISSING
        kwargs: dict[str, Any] = {"dest": dest_prefix + f.name, "help": f.metadata.get("help", "")}
        if default is dataclasses.MISSING:
            kwargs["required"] = True
        else:
            kwargs["default"] = default
            shown = ("on" if default else "off") if isinstance(default, bool) else default
            kwargs["help"] += f" (default: {shown})"
        kwargs.update(_argument_type(hint, f"{cls.__name__}.{f.name}"))
        group.add_argument(*flags, **kwargs)


def _argument_type(hint: Any, where: str) -> dict[str, Any]:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        if len(options) != 1:
            raise ConfigError(f"{where}: {hint!r} has no single command-line type")
        kind = _argument_type(options[0], where)
        if kind.get("action") is argparse.BooleanOptionalAction:
            raise ConfigError(f"{where}: an optional boolean has no command-line form")
        return kind
    if origin is Literal:
        return {"choices": list(args), "type": type(args[0])}
    if hint is bool:
        return {"action": argparse.BooleanOptionalAction}
    if hint in (int, float, str):
        return {"type": hint}
    if origin in (tuple, list) and args:
        item = args[0]
        if item not in (int, float, str) or any(a not in (item, Ellipsis) for a in args):
            raise ConfigError(f"{where}: {hint!r} has no command-line form")
        fixed = origin is tuple and args[-1] is not Ellipsis
        return {"type": item, "nargs": len(args) if fixed else "+"}
    raise ConfigError(f"{where}: {hint!r} has no command-line form")


def config_from_arguments(cls: type[C], args: argparse.Namespace, dest_prefix: str = "", **values: Any) -> C:
    """The config from the options :func:`add_config_arguments` added; ``values`` give the
    excluded fields (or replace parsed ones)."""
    parsed = {
        f.name: getattr(args, dest_prefix + f.name)
        for f in dataclasses.fields(cls)
        if hasattr(args, dest_prefix + f.name) and f.name not in values
    }
    return cls.from_dict({**parsed, **values})
