"""`load_settings`: the settings from their sources, with errors that say where.

Precedence, lowest first: the defaults (gateway/config.py), the YAML file
(`--config`, else `$GATEWAY_CONFIG`, else `./config.yaml`), environment
variables named `GATEWAY_<SECTION>__<KEY>` (nested keys joined by `__`; lists,
mappings and whole sections written as JSON), then the `overrides` of
`load_settings` (CLI flags, tests). pydantic-settings reads the file and the
environment; the merged values are validated once, as `Settings`, with the
environment in the context for the secrets (see `gateway.config`). An error
names the dotted key, and the variable that set it when one did.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    SettingsConfigDict,
    SettingsError,
    YamlConfigSettingsSource,
)

from gateway.config import ConfigError, Settings, secret_fields

__all__ = ["CONFIG_ENV", "ENV_PREFIX", "config_file", "load_settings"]

ENV_PREFIX = "GATEWAY_"
CONFIG_ENV = "GATEWAY_CONFIG"
DEFAULT_CONFIG_FILE = "config.yaml"


class _Sources(BaseSettings, Settings):
    """`Settings` as pydantic-settings' sources see it: its fields, and where in the
    environment they are. Never built: the merged values are validated as `Settings`,
    with the environment in the context for the secrets."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_nested_delimiter="__")


def load_settings(
    path: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Build the settings from file, environment and `overrides` (CLI flags, tests).

    `overrides` is a nested mapping applied last, e.g. `{"server": {"port": 0}}`.
    `environ` replaces `os.environ` (tests pass their own).
    """
    env = os.environ if environ is None else environ
    chosen = path if path is not None else env.get(CONFIG_ENV)
    data = _merged(
        _from_file(Path(chosen) if chosen else Path(DEFAULT_CONFIG_FILE), required=bool(chosen)),
        _from_environment(env),
        overrides or {},
    )
    try:
        return Settings.model_validate(data, context={"environ": env})
    except ValidationError as exc:
        raise ConfigError(_described(exc, _variables(env))) from None


def config_file(
    path: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None
) -> Path | None:
    """The file `load_settings(path)` reads: `path`, else `$GATEWAY_CONFIG`, else
    `./config.yaml` when it exists; None when only defaults and environment apply."""
    env = os.environ if environ is None else environ
    chosen = path if path is not None else env.get(CONFIG_ENV)
    if chosen:
        return Path(chosen)
    default = Path(DEFAULT_CONFIG_FILE)
    return default if default.exists() else None


def _from_file(path: Path, *, required: bool) -> dict[str, Any]:
    if not path.exists():
        if required:
            raise ConfigError(f"config file not found: {path}")
        return {}
    if path.is_dir():
        raise ConfigError(f"cannot read {path}: it is a directory")
    try:
        data = YamlConfigSettingsSource(_Sources, yaml_file=path)()
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    except (AttributeError, TypeError, ValueError):  # a top level that is no mapping
        raise ConfigError(f"{path}: the top level must be a mapping of sections") from None
    for key in _secret_keys(Settings, data):
        raise ConfigError(
            f"{key}: secrets are not read from files; "
            f"put it in the environment variable named by {key}_env"
        )
    return data


def _secret_keys(annotation: Any, value: Any, where: tuple[str, ...] = ()) -> Iterator[str]:
    """The dotted keys under `value`, read from a file as `annotation`, that hold a secret."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        if isinstance(value, Mapping):
            for name, field in annotation.model_fields.items():
                if name in value and name in secret_fields(annotation):
                    yield ".".join((*where, name))
                elif name in value:
                    yield from _secret_keys(field.annotation, value[name], (*where, name))
    elif get_origin(annotation) is dict and isinstance(value, Mapping):
        for key, item in value.items():
            yield from _secret_keys(get_args(annotation)[1], item, (*where, str(key)))
    elif get_origin(annotation) is list and isinstance(value, list):
        for index, item in enumerate(value):
            yield from _secret_keys(get_args(annotation)[0], item, (*where, str(index)))


class _Environment(EnvSettingsSource):
    """pydantic-settings' `GATEWAY_*` source over the mapping `load_settings` is given."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        super().__init__(_Sources)
        self.env_vars = {name.lower(): value for name, value in environ.items()}


def _from_environment(environ: Mapping[str, str]) -> dict[str, Any]:
    try:
        data = _Environment(environ)()
    except SettingsError:  # a JSON value that does not parse
        lines = ["invalid configuration:"]
        for keys, name in _variables(environ).items():
            value = environ[name]
            if value.lstrip().startswith(("[", "{")) and not _is_json(value):
                lines.append(f"  {'.'.join(keys)}: not valid JSON (from {name})")
        raise ConfigError("\n".join(lines)) from None
    for keys, name in _variables(environ).items():
        if keys[0] not in Settings.model_fields:  # unknown: refused by name, as in a file
            data[keys[0]] = environ[name]
    return data


def _variables(environ: Mapping[str, str]) -> dict[tuple[str, ...], str]:
    """The `GATEWAY_*` variables by the keys they set: `("server", "port")`."""
    return {
        tuple(name[len(ENV_PREFIX) :].lower().split("__")): name
        for name in environ
        if name.upper().startswith(ENV_PREFIX) and name.upper() != CONFIG_ENV
    }


def _is_json(value: str) -> bool:
    try:
        json.loads(value)
    except ValueError:
        return False
    return True


def _merged(*layers: Mapping[str, Any]) -> dict[str, Any]:
    """The layers merged key by key, each over the ones before it; mappings merge,
    anything else (lists too) is replaced."""
    merged: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            below = merged.get(key)
            if isinstance(value, Mapping) and isinstance(below, Mapping):
                merged[key] = _merged(below, value)
            else:
                merged[key] = dict(value) if isinstance(value, Mapping) else value
    return merged


def _described(exc: ValidationError, variables: Mapping[tuple[str, ...], str]) -> str:
    """One line per error: its dotted key, and the variables that set it or keys in it."""
    lines = ["invalid configuration:"]
    for error in exc.errors():
        loc = tuple(str(part) for part in error["loc"])
        above = [name for keys, name in variables.items() if loc[: len(keys)] == keys]
        below = [name for keys, name in variables.items() if loc and keys[: len(loc)] == loc]
        sources = above or below
        where = f" (from {', '.join(sources)})" if sources else ""
        lines.append(f"  {'.'.join(loc)}: {error['msg']}{where}")
    return "\n".join(lines)
