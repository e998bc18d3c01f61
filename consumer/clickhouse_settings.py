"""Where runstream's ClickHouse is and how to log in: one settings object, one `--clickhouse` option,
one connect path for every command and for `runstream.Client`.

- `ClickHouseSettings`: the DSN (`--clickhouse`, `RUNSTREAM_CLICKHOUSE`, `[clickhouse] dsn`), the user
  (`RUNSTREAM_CLICKHOUSE_USER`, `[clickhouse] user`) and the password (`RUNSTREAM_CLICKHOUSE_PASSWORD`,
  `[clickhouse] password`), a `SecretStr` that never prints; credentials apply to http(s) DSNs (the
  embedded chDB engine has no users) and are put into the DSN only on the way to the driver. Also the
  cluster `runstream migrate --cluster` lays the tables out on (`RUNSTREAM_CLUSTER`, `[clickhouse] cluster`).
- `add_clickhouse_option(parser)`: the option and its one help text (plus `--config` when the command lacks it).
- `connect_clickhouse(args)`: the parsed options to a connected client (consumer/dsn.py `connect`).

Importing this module does not import the ClickHouse driver (the CLI's parser and the bare SDK import it).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlparse, urlunparse

from pydantic import Field, SecretStr, field_validator

from runstream.consumer.dsn import connect, default_dsn, parse_dsn, redact
from runstream.producer.settings_layer import CONFIG_ENV, Settings, env

CLICKHOUSE_HELP = (
    "ClickHouse: chdb:///abs/path (embedded engine; default {default}) or http(s)://host:8123/database "
    "[env RUNSTREAM_CLICKHOUSE; [clickhouse] dsn of the config file]. Credentials: RUNSTREAM_CLICKHOUSE_USER "
    "and RUNSTREAM_CLICKHOUSE_PASSWORD (or [clickhouse] user / password), which win over any in the DSN; "
    "keep passwords out of command lines"
)
CONFIG_HELP = ("TOML config file: [clickhouse] (dsn, user, password), [kafka] (librdkafka options), [consumer] "
               "tables; options given here and RUNSTREAM_* variables win over it [env RUNSTREAM_CONFIG]")


class ClickHouseSettings(Settings):
    """A ClickHouse server (or embedded engine folder) and the credentials to use there."""

    config_table = "clickhouse"
    component = "clickhouse"

    dsn: str = Field(default_factory=default_dsn, json_schema_extra=env("RUNSTREAM_CLICKHOUSE"),
                     description="chdb:///abs/path or http(s)://host:port/database")
    user: str | None = Field(default=None, json_schema_extra=env("RUNSTREAM_CLICKHOUSE_USER"),
                             description="user for an http(s) DSN (default: the DSN's, else 'default')")
    password: SecretStr | None = Field(default=None, json_schema_extra=env("RUNSTREAM_CLICKHOUSE_PASSWORD"),
                                       description="password for an http(s) DSN (never printed)")
    cluster: str | None = Field(default=None, json_schema_extra=env("RUNSTREAM_CLUSTER"),
                                description="`runstream migrate` only: the ClickHouse cluster (remote_servers) to "
                                "lay the tables out on, with ON CLUSTER DDL (default: a single server)")

    @field_validator("dsn")
    @classmethod
    def _parses(cls, dsn: str) -> str:
        parse_dsn(dsn)  # its ValueError names the DSN, password redacted
        return dsn

    def __repr__(self) -> str:
        return (f"ClickHouseSettings(dsn={redact(self.dsn)!r}, user={self.user!r}, "
                f"password={self.password!r}, cluster={self.cluster!r})")

    __str__ = __repr__

    @property
    def embedded(self) -> bool:
        return parse_dsn(self.dsn).embedded

    @property
    def database(self) -> str:
        return parse_dsn(self.dsn).database

    def authenticated_dsn(self) -> str:
        """The DSN with the user and password put in (percent-encoded), for the driver only: it holds the
        password in clear, so it goes to `connect()` and never to a log line (`redact()` it first)."""
        password = self.password.get_secret_value() if self.password is not None else None
        return with_credentials(self.dsn, self.user, password)

    def redacted(self) -> str:
        """The DSN as logs and errors may show it."""
        return redact(self.authenticated_dsn())

    def connect(self, *, create_database: bool = False) -> tuple[Any, str]:
        """A clickhouse-connect client and the database name (consumer/dsn.py `connect`)."""
        return connect(self.authenticated_dsn(), create_database=create_database)


def with_credentials(dsn: str, user: str | None, password: str | None) -> str:
    """The DSN with a user and password put in (percent-encoded). Credentials apply to http(s) only: a chdb DSN
    is returned as it is, so one set of RUNSTREAM_CLICKHOUSE_* variables serves both kinds of command."""
    if not user and not password:
        return dsn
    parsed = urlparse(dsn)
    if parsed.scheme not in ("http", "https"):
        return dsn
    user = user or parsed.username or "default"
    host = parsed.hostname or ""
    netloc = f"{quote(user, safe='')}:{quote(password or parsed.password or '', safe='')}@{host}"
    if parsed.port:
        netloc += f":{parsed.port}"
    return urlunparse(parsed._replace(netloc=netloc))


def add_config_option(parser: argparse.ArgumentParser, help_text: str = CONFIG_HELP) -> None:
    """`--config FILE`, once per command (a command that reads Kafka and ClickHouse asks for it twice)."""
    if "--config" not in parser._option_string_actions:  # argparse has no public lookup
        parser.add_argument("--config", type=Path, default=os.environ.get(CONFIG_ENV) or None, metavar="FILE",
                            help=help_text)


def add_clickhouse_option(parser: argparse.ArgumentParser) -> None:
    """`--clickhouse DSN` with its one help text, and `--config` if the command has none yet.

    The option's default is None, so `load()` can tell "not given" from a value: the environment and the
    config file then fill it in, in that order.
    """
    parser.add_argument("--clickhouse", default=None, metavar="DSN", help=CLICKHOUSE_HELP.format(default=default_dsn()))
    add_config_option(parser)


def clickhouse_settings(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> ClickHouseSettings:
    """The parsed options (`--clickhouse`, `--config`, migrate's `--cluster`) over the environment over the file."""
    given = {"dsn": getattr(args, "clickhouse", None), "cluster": getattr(args, "cluster", None)}
    return ClickHouseSettings.load(given, environ=environ, config_file=getattr(args, "config", None))


def connect_clickhouse(args: argparse.Namespace, *, create_database: bool = False) -> tuple[Any, str]:
    """Every command's way to ClickHouse: read commands pass create_database=False (they never run DDL)."""
    return clickhouse_settings(args).connect(create_database=create_database)


__all__ = ["CLICKHOUSE_HELP", "ClickHouseSettings", "add_clickhouse_option", "add_config_option",
           "clickhouse_settings", "connect_clickhouse", "with_credentials"]
