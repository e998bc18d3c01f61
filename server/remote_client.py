"""The read commands' ClickHouse client while a `runstream server` holds the embedded folder.

It answers the part of clickhouse-connect's client that runstream's read path uses (`query`, `query_arrow`,
`query_column_block_stream`, `command`, `close`) by sending the SQL and its parameters to the server's
`POST /api/sql`, so `runs`, `compare`, `best`, `report`, `query`, `cost`, `drift` and `runstream.Client` run
their own SQL unchanged and print the same answer (server/wire.py keeps every value's type). The server runs it
read-only; a write (an insert, DDL) is refused with a message that names the server and says what to do.

Errors from the engine arrive as clickhouse-connect's own `DatabaseError`, so the commands' existing error
handling (one line, exit 2) applies unchanged; a refused write is a `FolderHeldByServer`.
"""

from __future__ import annotations

import contextlib
import io
import json
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from typing import Any

from runstream.server.discovery import ServerAddress
from runstream.server.wire import ARROW_STREAM, decode_result, encode_parameters

BLOCK_ROWS = 65_536  # rows per block of query_column_block_stream, as the driver's own blocks are sized


class FolderHeldByServer(RuntimeError):
    """A write (or a statement the server's read-only SQL refuses) sent to the server that holds the folder.

    A RuntimeError, so that every command prints it as its one error line, and never a ConnectionError, which
    the consumer would retry forever."""


class RemoteResult:
    """What read code takes from clickhouse-connect's QueryResult: names, types, rows and their views."""

    def __init__(self, column_names: list[str], type_names: list[str], rows: list[tuple[Any, ...]]) -> None:
        self.column_names = tuple(column_names)
        self.type_names = type_names
        self.result_rows = rows

    @property
    def result_columns(self) -> list[list[Any]]:
        return [list(column) for column in zip(*self.result_rows, strict=True)] if self.result_rows \
            else [[] for _ in self.column_names]

    @property
    def row_count(self) -> int:
        return len(self.result_rows)

    @property
    def first_row(self) -> tuple[Any, ...]:
        return self.result_rows[0]

    @property
    def first_item(self) -> dict[str, Any]:
        return dict(zip(self.column_names, self.result_rows[0], strict=True))

    def named_results(self) -> Iterator[dict[str, Any]]:
        for row in self.result_rows:
            yield dict(zip(self.column_names, row, strict=True))


class RemoteClient:
    """A clickhouse-connect-like client whose queries a running `runstream server` answers."""

    def __init__(self, server: ServerAddress, folder: str, *, timeout_s: float = 300.0) -> None:
        self.server = server
        self.folder = folder
        self.database = server.database
        self.timeout_s = timeout_s

    def __repr__(self) -> str:
        return f"RemoteClient({self.server.url!r}, database={self.database!r})"

    def query(self, query: str, parameters: dict[str, Any] | None = None, **_options: Any) -> RemoteResult:
        columns, types, rows = decode_result(self._post(query, parameters, arrow=False))
        return RemoteResult(columns, types, rows)

    def query_arrow(self, query: str, parameters: dict[str, Any] | None = None, **_options: Any) -> Any:
        import pyarrow as pa

        with pa.ipc.open_stream(io.BytesIO(self._post(query, parameters, arrow=True))) as reader:
            return reader.read_all()

    @contextlib.contextmanager
    def query_column_block_stream(self, query: str, parameters: dict[str, Any] | None = None,
                                  **_options: Any) -> Iterator[Iterator[Sequence[Sequence[Any]]]]:
        columns = self.query(query, parameters).result_columns

        def blocks() -> Iterator[Sequence[Sequence[Any]]]:
            rows = len(columns[0]) if columns else 0
            for start in range(0, rows, BLOCK_ROWS):
                yield [column[start:start + BLOCK_ROWS] for column in columns]

        yield blocks()

    def command(self, cmd: str, parameters: dict[str, Any] | None = None, **_options: Any) -> Any:
        """As the driver's `command`: one value for a one-cell answer, else the first row's values."""
        rows = self.query(cmd, parameters).result_rows
        if not rows:
            return None
        return rows[0][0] if len(rows[0]) == 1 else list(rows[0])

    def insert(self, *_args: Any, **_kwargs: Any) -> Any:
        raise self._held("insert")

    insert_arrow = insert_df = insert

    def close(self) -> None:
        """Nothing to release: every request is its own HTTP exchange."""

    def _held(self, what: str) -> FolderHeldByServer:
        return FolderHeldByServer(
            f"cannot {what}: the embedded ClickHouse at {self.folder} is held by `runstream server` "
            f"(pid {self.server.pid}, {self.server.url}), which answers reads only; it loads the spool and Kafka "
            "itself, or stop it to run this command")

    def _post(self, sql: str, parameters: dict[str, Any] | None, *, arrow: bool) -> bytes:
        from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError

        body = json.dumps({"sql": sql, "parameters": encode_parameters(parameters)}).encode()
        url = f"{self.server.url}/api/sql" + ("?format=arrow" if arrow else "")
        request = urllib.request.Request(url, data=body, method="POST",  # noqa: S310 (the server's own http URL)
                                         headers={"Content-Type": "application/json",
                                                  "Accept": ARROW_STREAM if arrow else "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:  # noqa: S310
                return bytes(response.read())
        except urllib.error.HTTPError as error:
            message = _error_message(error)
            if error.code == 403:
                raise self._held(f"run this statement ({message})") from None
            raise DatabaseError(message) from None
        except OSError as error:
            raise OperationalError(f"runstream server at {self.server.url} did not answer: {error}") from None


def _error_message(error: urllib.error.HTTPError) -> str:
    text = error.read().decode(errors="replace")
    try:
        return str(json.loads(text)["error"])
    except (ValueError, KeyError, TypeError):
        return f"HTTP {error.code}: {text[:500]}"


__all__ = ["FolderHeldByServer", "RemoteClient", "RemoteResult"]
