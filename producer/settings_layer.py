"""The one settings layer every runstream component builds on (pydantic-settings).

It owns where a setting's value comes from and how a bad one is reported:

- precedence, per setting: arguments > the `RUNSTREAM_*` environment variable > the component's table
  of the TOML config file (`--config`, else `RUNSTREAM_CONFIG`) > the default;
- each setting is defined once, as a field of a frozen model: name, type, default, environment variable
  (`RUNSTREAM_<NAME>` unless the field names another with `env(...)`), and doc;
- unknown keys (arguments, config-file table) are rejected with the key named;
- errors name the setting, where its value came from and the value, never a secret's value
  (fields typed `SecretStr`, whose values never print either).

Constructing a model directly (`ProducerSettings(spool=...)`) takes the arguments and defaults only;
`load()` is what reads the environment and the file, so tests and library callers get exactly what
they pass.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Self

from pydantic import SecretStr, ValidationError, ValidationInfo
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

#: The TOML file every component reads its table of when no `--config` is given.
CONFIG_ENV = "RUNSTREAM_CONFIG"
ENV_PREFIX = "RUNSTREAM_"


class SettingsError(ValueError):
    """A setting that cannot be used: the message names the setting, where it came from and (unless
    it is a secret) the value."""


def env(variable: str | None, *, file: bool = True) -> dict[str, Any]:
    """`Field(json_schema_extra=env("RUNSTREAM_X"))`: the field's environment variable, when it is not
    `RUNSTREAM_<NAME>`; `env(None)`: the field is not read from the environment; `file=False`: nor from
    the component's table of the config file (a setting resolved elsewhere, as the Kafka ones)."""
    return {"env": variable, "file": file}


def positive_seconds(value: float, info: ValidationInfo) -> float:
    """A duration setting must be > 0 (0 would spin a loop or time out at once): every component's
    models use this one check, `_positive = field_validator("a_s", "b_s")(positive_seconds)`."""
    if not value > 0:
        raise ValueError(f"{info.field_name}: expected a positive number of seconds, got {value!r}")
    return value


def file_keys(model: type[BaseSettings]) -> list[str]:
    """The keys the model's table of the config file may hold."""
    keys = []
    for name, info in model.model_fields.items():
        extra = info.json_schema_extra
        if not (isinstance(extra, dict) and extra.get("file") is False):
            keys.append(name)
    return keys


def read_config_file(path: Path | str, error: type[ValueError] = SettingsError) -> dict[str, Any]:
    """A runstream TOML config file as a dict; a missing or malformed file raises `error` naming the file."""
    try:
        return tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise error(f"config file {str(path)!r} does not exist") from None
    except tomllib.TOMLDecodeError as decode_error:
        raise error(f"config file {str(path)!r}: {decode_error}") from None


def config_table(path: Path | str | None, table: str, error: type[ValueError] = SettingsError) -> dict[str, Any]:
    """The `[table]` of a config file ({} without a file or without the table)."""
    if not path:
        return {}
    value = read_config_file(path, error).get(table, {})
    if not isinstance(value, dict):
        raise error(f"config file {str(path)!r}: [{table}] must be a table")
    return value


@dataclass(frozen=True)
class _Sources:
    """What one `load()` call reads besides its arguments."""

    environ: Mapping[str, str]
    file: str | None
    table: Mapping[str, Any] = field(default_factory=dict)


_LOADING: ContextVar[_Sources | None] = ContextVar("runstream_settings_sources", default=None)


def env_variable(model: type[BaseSettings], name: str) -> str | None:
    """The environment variable a field is read from (None: not read from the environment)."""
    extra = model.model_fields[name].json_schema_extra
    if isinstance(extra, dict) and "env" in extra:
        variable = extra["env"]
        return variable if isinstance(variable, str) else None
    return ENV_PREFIX + name.upper()


class _Environment(PydanticBaseSettingsSource):
    """Each field's one environment variable (set and not empty), from the mapping `load()` was given."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # __call__ reads every field at once

    def __call__(self) -> dict[str, Any]:
        sources = _LOADING.get()
        if sources is None:
            return {}
        values = {}
        for name in self.settings_cls.model_fields:
            variable = env_variable(self.settings_cls, name)
            if variable and sources.environ.get(variable):
                values[name] = sources.environ[variable]
        return values


class _FileTable(PydanticBaseSettingsSource):
    """The component's table of the config file."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        sources = _LOADING.get()
        return {} if sources is None else dict(sources.table)


class Settings(BaseSettings):
    """Base of every component's settings: frozen, unknown keys refused, layered by `load()`."""

    model_config = SettingsConfigDict(frozen=True, extra="forbid", validate_default=True)
    #: The config file's table this component reads ("" = none).
    config_table: ClassVar[str] = ""
    #: What the error messages call this component's settings.
    component: ClassVar[str] = "settings"

    def __init__(self, **values: Any) -> None:
        sources = _LOADING.get()
        try:
            super().__init__(**values)
        except ValidationError as error:
            raise SettingsError(describe(type(self), error, values, sources)) from None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, _Environment(settings_cls), _FileTable(settings_cls)

    @classmethod
    def load(
        cls,
        arguments: Mapping[str, Any] | None = None,
        *,
        environ: Mapping[str, str] | None = None,
        config_file: Path | str | None = None,
        table: Mapping[str, Any] | None = None,
    ) -> Self:
        """Arguments (None = not given) > environment (`os.environ` unless given) > the config file's table
        (`config_file`, else `RUNSTREAM_CONFIG`; or `table`, already read) > defaults."""
        environ = os.environ if environ is None else environ
        given = {key: value for key, value in (arguments or {}).items() if value is not None}
        unknown = sorted(set(given) - set(cls.model_fields))
        if unknown:
            raise SettingsError(f"unknown {cls.component} setting(s): {', '.join(unknown)}; "
                                f"known: {', '.join(cls.model_fields)}")
        path = str(config_file) if config_file else environ.get(CONFIG_ENV) or None
        if table is None:
            table = config_table(path, cls.config_table) if cls.config_table else {}
        unknown = sorted(set(table) - set(file_keys(cls)))
        if unknown:
            raise SettingsError(f"config file {path!r}: unknown key(s) in [{cls.config_table}]: "
                                f"{', '.join(unknown)}; known: {', '.join(file_keys(cls))}")
        token = _LOADING.set(_Sources(environ, path, table))
        try:
            return cls(**given)
        finally:
            _LOADING.reset(token)

    @classmethod
    def describe_fields(cls) -> list[tuple[str, str, str, str]]:
        """(setting, environment variable, default, doc) for each setting: the docs' table."""
        rows = []
        for name, info in cls.model_fields.items():
            default = "" if info.is_required() else _shown_default(info.get_default(call_default_factory=True))
            rows.append((name, env_variable(cls, name) or "", default, info.description or ""))
        return rows


def _shown_default(value: Any) -> str:
    """A default as the docs show it: paths under the home folder as ~/..., the same on every machine."""
    text = str(value) if isinstance(value, Path) else repr(value)
    return text.replace(str(Path.home()), "~")


def markdown_table(models: list[type[Settings]]) -> str:
    """Every setting of `models` as one Markdown table (`runstream config`, the README's configuration table)."""
    lines = ["| setting (`[table] key`) | environment variable | default | meaning |", "|---|---|---|---|"]
    for model in models:
        in_file = file_keys(model)
        for name, variable, default, doc in model.describe_fields():
            key = (f"`[{model.config_table}] {name}`" if model.config_table and name in in_file
                   else f"`{name}` ({model.component}, argument only)")
            lines.append(f"| {key} | {f'`{variable}`' if variable else '-'} | `{default}` | {doc} |")
    return "\n".join(lines)


def _is_secret(model: type[BaseSettings], name: str) -> bool:
    info = model.model_fields.get(name)
    annotation = str(info.annotation) if info is not None else ""
    return "SecretStr" in annotation or name.endswith(("password", "secret"))


def _origin(model: type[BaseSettings], name: str, arguments: Mapping[str, Any], sources: _Sources | None) -> str:
    """Where a field's value came from, by the same precedence as the sources."""
    if name in arguments:
        return "argument" if sources is not None else model.__name__
    if sources is not None:
        variable = env_variable(model, name)
        if variable and sources.environ.get(variable):
            return f"environment {variable}"
        if name in sources.table:
            return f"config file {sources.file!r} [{getattr(model, 'config_table', '')}] {name}"
    return "default"


def _expected(model: type[BaseSettings], name: str) -> str:
    info = model.model_fields.get(name)
    if info is None or info.annotation is None:
        return "valid"
    kind = info.annotation
    return getattr(kind, "__name__", None) or str(kind).replace("typing.", "").replace("pydantic.types.", "")


def describe(model: type[BaseSettings], error: ValidationError, arguments: Mapping[str, Any],
             sources: _Sources | None) -> str:
    """pydantic's errors as one line each: `<where>: <setting> must be <type>, got <value>` or the
    validator's own message; a secret's value is never shown (pydantic's own text would show it)."""
    lines = []
    for item in error.errors(include_url=False):
        name = str(item["loc"][0]) if item["loc"] else "?"
        where = _origin(model, name, arguments, sources)
        if item["type"] == "extra_forbidden":
            lines.append(f"{where}: unknown setting {name!r}; known: {', '.join(model.model_fields)}")
            continue
        if item["type"] == "value_error":  # our validators' messages name the setting and value already
            cause = item.get("ctx", {}).get("error")
            lines.append(f"{where}: {cause}")
            continue
        shown = "" if _is_secret(model, name) else f", got {item.get('input')!r}"
        lines.append(f"{where}: {name} must be {_expected(model, name)}{shown} ({item['msg']})")
    return "; ".join(lines)


__all__ = ["CONFIG_ENV", "SecretStr", "Settings", "SettingsError", "config_table", "describe", "env",
           "env_variable", "markdown_table", "read_config_file"]
