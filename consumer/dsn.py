"""ClickHouse connection strings: `chdb:///path` (embedded engine) or `http(s)://user:pass@host:port/db`.

The same SQL runs on both. Tables are always named with their database, so the client never
needs a `USE`, and a database that does not exist yet can be created on first connect.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlencode, urlparse, urlunparse

DEFAULT_DATABASE = "runstream"
DEFAULT_CHDB_PATH = Path.home() / ".runstream" / "clickhouse"
_DATABASE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def default_dsn() -> str:
    return f"chdb://{DEFAULT_CHDB_PATH}"


@dataclass(frozen=True)
class ClickHouseTarget:
    """A parsed DSN: what to hand clickhouse-connect, and the database our tables live in."""

    client_dsn: str
    database: str
    embedded: bool

    def __repr__(self) -> str:
        return f"ClickHouseTarget({redact(self.client_dsn)!r}, database={self.database!r})"


def parse_dsn(dsn: str) -> ClickHouseTarget:
    parsed = urlparse(dsn)
    query = {k: v[0] for k, v in parse_qs(parsed.query).items()}
    if parsed.scheme == "chdb":
        database = query.pop("database", DEFAULT_DATABASE)
        if parsed.netloc == "memory" and parsed.path in ("", "/"):
            client = "chdb://memory"
        elif parsed.netloc or not parsed.path.startswith("/"):
            raise ValueError(f"clickhouse DSN {dsn!r}: a chdb path must be absolute, as in chdb:///data/ch")
        else:
            client = f"chdb://{parsed.path}"
        _check_database(dsn, database)
        return ClickHouseTarget(client, database, embedded=True)
    if parsed.scheme in ("http", "https"):
        database = parsed.path.strip("/") or query.pop("database", DEFAULT_DATABASE)
        _check_database(dsn, database)
        client = urlunparse((parsed.scheme, parsed.netloc, "", "", urlencode(query), ""))
        return ClickHouseTarget(client, database, embedded=False)
    raise ValueError(
        f"clickhouse DSN {redact(dsn)!r}: unsupported scheme {parsed.scheme!r}; "
        "use chdb:///path/to/dir or http(s)://user:password@host:8123/database"
    )


def _check_database(dsn: str, database: str) -> None:
    if not _DATABASE_NAME.match(database):
        raise ValueError(f"clickhouse DSN {redact(dsn)!r}: invalid database name {database!r}")


_USERINFO = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^:@/]*):(?P<password>.*)@")


def redact(dsn: str) -> str:
    """The DSN with any password replaced, for logs and error messages.

    Everything from the user's colon to the last '@' is masked, so a password that was not percent-encoded
    (and holds '/', ':' or '@', which a URL parser would split elsewhere) is masked whole; masking too much
    is the safe mistake.
    """
    return _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:***@", dsn, count=1)


def connect(dsn: str, *, create_database: bool = True) -> tuple[Any, str]:
    """A clickhouse-connect client and the database name; creates the database if needed.

    Read commands pass `create_database=False`: they never run DDL, and a database that is not
    there raises ConnectionError saying to run `runstream migrate`.
    """
    import clickhouse_connect

    target = parse_dsn(dsn)
    if target.embedded and target.client_dsn != "chdb://memory":
        folder = Path(target.client_dsn[len("chdb://") :])
        folder.mkdir(parents=True, exist_ok=True)
        served = _served(folder, target.database)
        if served is not None:
            return served, target.database
    try:
        bootstrap = clickhouse_connect.get_client(dsn=target.client_dsn)
        if create_database:
            bootstrap.command(f"CREATE DATABASE IF NOT EXISTS {target.database}")
            exists = True
        else:
            exists = bool(bootstrap.query("SELECT count() FROM system.databases WHERE name = {db:String}",
                                          parameters={"db": target.database}).result_rows[0][0])
        bootstrap.close()
        # A second client whose default database is ours, so users' SQL may name tables bare.
        client = clickhouse_connect.get_client(dsn=target.client_dsn, database=target.database) if exists else None
    except Exception as error:
        # The driver's message may quote the DSN; ours never shows the password.
        raise ConnectionError(
            f"cannot connect to ClickHouse at {redact(dsn)}: {type(error).__name__}: {_scrub(str(error), dsn)}"
        ) from None
    if client is None:
        raise ConnectionError(f"database {target.database!r} does not exist at {redact(dsn)}: run `runstream migrate` "
                          "with the same --clickhouse (the consumer also creates it when it starts)")
    return client, target.database


def _served(folder: Path, database: str) -> Any | None:
    """The client of a `runstream server` (another process) that holds `folder`, or None when none runs.

    The embedded engine admits one process per folder: while a server holds it, reads go through the server's
    API (server/remote_client.py) and writes are refused there with a message naming the server.
    """
    import os

    from runstream.server.discovery import running_server

    server = running_server(folder)
    if server is None or server.pid == os.getpid():
        return None
    from runstream.server.remote_client import RemoteClient

    client = RemoteClient(server, str(folder))
    known = client.query("SELECT count() FROM system.databases WHERE name = {db:String}", {"db": database})
    if not known.result_rows[0][0]:
        raise ConnectionError(f"database {database!r} does not exist in {folder}, which runstream server "
                              f"(pid {server.pid}, {server.url}) holds; it serves database {server.database!r}")
    return client


def _scrub(text: str, dsn: str) -> str:
    """The driver's message without the password, as written in the DSN or percent-decoded."""
    password = urlparse(dsn).password
    for form in sorted({password, unquote(password)} if password else set(), key=len, reverse=True):
        text = text.replace(form, "***") if form else text
    return redact(text)
