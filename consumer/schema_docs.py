"""The docs' schema tables, generated from the table specs: `python -m runstream.consumer.schema_docs --write`.

The `Table`, `MaterializedView` and `View` specs (`consumer/migrations.py`, `consumer/monitoring_tables.py`,
`analysis/views.py`) are the one description of runstream's ClickHouse objects: the migrations, the cluster
DDL and the consumer's rows come from them, and so do the tables in docs/storage.md and docs/sql.md. Each
generated part sits between two marker comments naming it; everything outside them is written by hand.
Adding a column is an edit of its spec, its migration, and a run of this module; tests/test_schema_docs.py
fails while the docs differ from what the specs generate (`--check`, the default, says which file).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from runstream.consumer.run_projects import RAW_TABLES
from runstream.consumer.table_spec import BY_RUN, EVERY_NODE, MaterializedView, Table, View

COMMAND = "python -m runstream.consumer.schema_docs --write"


@dataclass(frozen=True)
class Schema:
    """What the docs describe: every table, MV and view that the latest migration leaves in a database."""

    tables: tuple[Table, ...]
    materialized_views: tuple[MaterializedView, ...]
    views: tuple[View, ...]


def current_schema() -> Schema:
    """The specs as the migrations and the cluster DDL use them (imported here: a heavy-ish module)."""
    from runstream.consumer import migrations

    return Schema(migrations.TABLES, migrations.MATERIALIZED_VIEWS, migrations.VIEWS)


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    default: str = ""
    codec: str = ""


def _top_level(text: str, keyword: str) -> int:
    """Where ` KEYWORD ` starts outside parentheses and quotes, or -1."""
    depth, quoted = 0, False
    for i, char in enumerate(text):
        if char == "'":
            quoted = not quoted
        elif not quoted and char == "(":
            depth += 1
        elif not quoted and char == ")":
            depth -= 1
        elif not quoted and depth == 0 and text.startswith(f" {keyword}", i):
            rest = text[i + 1 + len(keyword):]
            if not rest or rest[0] in " (":
                return i
    return -1


def parse_column(definition: str) -> Column:
    """`name Type [DEFAULT expr] [CODEC(...)]` as a spec writes it; ValueError naming the definition otherwise."""
    name, _, rest = definition.strip().partition(" ")
    if not name or not rest:
        raise ValueError(f"column definition {definition!r}: expected 'name Type'")
    codec = ""
    at = _top_level(rest, "CODEC")
    if at >= 0:
        rest, codec = rest[:at], rest[at + 1:].strip()
    default = ""
    at = _top_level(rest, "DEFAULT")
    if at >= 0:
        rest, default = rest[:at], rest[at + len(" DEFAULT"):].strip()
    return Column(name, rest.strip(), default, codec)


def _code(text: str) -> str:
    """Markdown inline code that survives a table: pipes escaped."""
    return f"`{text}`".replace("|", "\\|")


def _engine(table: Table) -> str:
    return f"{table.engine}({table.version})" if table.version else table.engine


def _sharding(table: Table) -> str:
    if table.sharding == BY_RUN:
        return "by run"
    if table.sharding == EVERY_NODE:
        return "whole on every node"
    return _code(table.sharding)


def _fed_by(table: Table, schema: Schema) -> str:
    sources = [f"{_code(mv.name)} from {_code(mv.source)}" for mv in schema.materialized_views
               if mv.target == table.name]
    return ", ".join(sources) or "—"


def tables_block(schema: Schema) -> str:
    """docs/storage.md: engine, key, partition and layout of every table; what feeds each MV target."""
    lines = [
        "| table | engine | ORDER BY (a row's identity) | partition | fed by | TTL | on a cluster |",
        "|---|---|---|---|---|---|---|",
    ]
    for table in schema.tables:
        engine = "; ".join([_engine(table), *(_code(setting) for setting in table.settings)])
        ttl = ", ".join([*(["`migrate --sample-ttl-days`"] if table.expires else []),
                         *(["`retention set` (per project)"] if table.name in RAW_TABLES else [])]) or "—"
        partition = _code(table.partition_by) if table.partition_by else "—"
        lines.append(f"| {_code(table.name)} | {engine} | {_code(table.order_by)} | {partition} | "
                     f"{_fed_by(table, schema)} | {ttl} | {_sharding(table)} |")
    lines += ["", "| materialized view | reads the inserts into | writes to |", "|---|---|---|"]
    lines += [f"| {_code(mv.name)} | {_code(mv.source)} | {_code(mv.target)} |" for mv in schema.materialized_views]
    lines += ["", "| view | reads |", "|---|---|"]
    lines += [f"| {_code(view.name)} | {', '.join(_code(name) for name in view_sources(view, schema))} |"
              for view in schema.views]
    return "\n".join(lines)


def view_sources(view: View, schema: Schema) -> list[str]:
    """The tables and views a view's select names (as {name}), in order of first mention."""
    known = {table.name for table in schema.tables} | {other.name for other in schema.views}
    seen: list[str] = []
    for name in re.findall(r"(?<!\{)\{(\w+)\}(?!\})", view.select):
        if name in known and name not in seen:
            seen.append(name)
    return seen


def columns_block(schema: Schema) -> str:
    """docs/storage.md: every column of every table with its type, default and codec."""
    out: list[str] = []
    for table in schema.tables:
        out += [f"#### {_code(table.name)}", "", "| column | type | default | codec |", "|---|---|---|---|"]
        for column in map(parse_column, table.columns):
            out.append(f"| {_code(column.name)} | {_code(column.type)} | "
                       f"{_code(column.default) if column.default else ''} | "
                       f"{_code(column.codec) if column.codec else ''} |")
        out.append("")
    return "\n".join(out).rstrip()


def facts_block(schema: Schema) -> str:
    """docs/sql.md: the tables a user's SQL reads, one row per what, and their columns."""
    from runstream.consumer.migrations import FACT_TABLES

    facts = [table for table in schema.tables if table.name in {fact.name for fact in FACT_TABLES}]
    lines = ["| table | one row per (ORDER BY) | columns |", "|---|---|---|"]
    for table in facts:
        key = table.order_by.strip("()")
        lines.append(f"| {_code(table.name)} | {_code(key)} | {', '.join(table.column_names)} |")
    return "\n".join(lines)


#: (file under the repository, block name, renderer).
BLOCKS: tuple[tuple[str, str, Callable[[Schema], str]], ...] = (
    ("docs/storage.md", "tables", tables_block),
    ("docs/storage.md", "columns", columns_block),
    ("docs/sql.md", "fact-tables", facts_block),
)


def _markers(name: str) -> tuple[str, str]:
    return (f"<!-- schema:{name} begin: generated from the table specs by `{COMMAND}`; edit the specs -->",
            f"<!-- schema:{name} end -->")


def render(text: str, name: str, body: str, *, path: str = "") -> str:
    """`text` with the part between block `name`'s markers replaced by `body`; ValueError if they are missing."""
    begin, end = _markers(name)
    pattern = re.compile(rf"<!-- schema:{re.escape(name)} begin[^\n]*-->\n.*?\n{re.escape(end)}", re.DOTALL)
    if not pattern.search(text):
        raise ValueError(f"{path or 'docs'}: markers of schema block {name!r} not found (expected {begin!r} "
                         f"... {end!r})")
    return pattern.sub(lambda _: f"{begin}\n{body}\n{end}", text, count=1)


def generate(root: Path, schema: Schema | None = None) -> dict[Path, str]:
    """Every docs file with schema blocks, as the specs would have it."""
    schema = schema or current_schema()
    texts: dict[Path, str] = {}
    for relative, name, renderer in BLOCKS:
        path = root / relative
        text = texts.get(path)
        if text is None:
            text = path.read_text(encoding="utf-8")
        texts[path] = render(text, name, renderer(schema), path=relative)
    return texts


def stale(root: Path, schema: Schema | None = None) -> list[Path]:
    """Docs files whose schema blocks differ from what the specs generate."""
    return [path for path, text in generate(root, schema).items() if path.read_text(encoding="utf-8") != text]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runstream.consumer.schema_docs", description=__doc__)
    parser.add_argument("--write", action="store_true", help="rewrite the blocks (default: check and report)")
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="the repository (default: here)")
    args = parser.parse_args(argv)
    if args.write:
        for path, text in generate(args.root).items():
            if path.read_text(encoding="utf-8") != text:
                path.write_text(text, encoding="utf-8")
                print(f"rewrote the schema tables of {path}")
        return 0
    outdated = stale(args.root)
    for path in outdated:
        print(f"{path}: schema tables differ from the table specs; run `{COMMAND}`", file=sys.stderr)
    return 1 if outdated else 0


if __name__ == "__main__":
    raise SystemExit(main())
