"""Read-only access for the HTTP API: a client of its own whose every statement runs under ClickHouse's
`readonly=2`, and a check of user SQL for what that setting lets through.

Why a client of its own: the embedded engine (chDB) keeps a query's settings in the session when the query
fails (measured: after a refused INSERT under `readonly=2`, the same client's next INSERT was refused too), so
query-level settings on the loaders' client could lock the spool follower out of writing. The API's reads go
through this client, the loaders write through theirs.

Why a check besides `readonly`: the engine's read-only mode refuses INSERT, ALTER, DROP, CREATE and raising
`readonly` (code 164), but not everything that touches the machine: measured on chDB, `SELECT ... INTO OUTFILE`
wrote a file under `readonly=1` and `readonly=2`, and the table function `file()` read /etc/hostname under
`readonly=2`. `check_statement` parses the statement with the engine's own parser (`EXPLAIN AST`, nothing
executed) and refuses INTO OUTFILE, the function `file`, and table functions other than the pure generators
(numbers, zeros, values, ...), which could read files or reach other hosts (url, s3, remote, mysql...).
"""

from __future__ import annotations

from typing import Any

#: ClickHouse's setting that refuses writes and DDL but lets a query set other settings (1 refuses those too,
#: and `runstream cost budgets` sets join_use_nulls).
READ_ONLY_SETTINGS = {"readonly": 2}
#: Table functions that only generate rows (or read this database's tables); every other one is refused.
TABLE_FUNCTIONS = frozenset({"numbers", "numbers_mt", "zeros", "zeros_mt", "values", "generateSeries",
                             "generate_series", "view", "null"})


class ReadOnlyRefused(PermissionError):
    """A statement the API refuses because it would write or reach outside the database (403)."""


def read_only_client(dsn: str) -> Any:
    """A clickhouse-connect client whose statements all run with READ_ONLY_SETTINGS (`dsn` with credentials)."""
    import clickhouse_connect

    from runstream.consumer.dsn import parse_dsn

    target = parse_dsn(dsn)
    return clickhouse_connect.get_client(dsn=target.client_dsn, database=target.database,
                                         settings=dict(READ_ONLY_SETTINGS))


def check_statement(client: Any, sql: str, parameters: dict[str, Any] | None = None) -> None:
    """Raise ReadOnlyRefused naming what `sql` does that the API refuses; a statement the engine cannot parse
    raises the engine's own error (400)."""
    lines = [str(row[0]) for row in client.query(f"EXPLAIN AST {sql}", parameters=parameters or {}).result_rows]
    for index, line in enumerate(lines):
        depth, node = len(line) - len(line.lstrip(" ")), line.strip()
        if depth == 1 and node.startswith("Literal"):  # the query's INTO OUTFILE 'path'
            raise ReadOnlyRefused(f"sql: INTO OUTFILE would write a file on the server ({node}); the API is read-only")
        name = node.split()[1] if node.startswith("Function ") and len(node.split()) > 1 else None
        if name == "file":
            raise ReadOnlyRefused("sql: the function file() reads files on the server; the API refuses it")
        if node.startswith("TableExpression") and index + 1 < len(lines):
            child = lines[index + 1].strip().split()
            if len(child) > 1 and child[0] == "Function" and child[1] not in TABLE_FUNCTIONS:
                raise ReadOnlyRefused(f"sql: the table function {child[1]}() reaches outside the database; the API "
                                      f"allows only {', '.join(sorted(TABLE_FUNCTIONS))}")
