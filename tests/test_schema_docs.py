"""The docs' schema tables are what the table specs generate (runstream.consumer.schema_docs).

Fails when a column, table or view was added to the specs without re-running
`python -m runstream.consumer.schema_docs --write`, or when the generated part was edited by hand.
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from runstream.consumer import schema_docs
from runstream.consumer.schema_docs import Schema, current_schema, parse_column

REPO = Path(__file__).resolve().parent.parent


def test_the_docs_are_what_the_specs_generate() -> None:
    assert schema_docs.stale(REPO) == [], "run: python -m runstream.consumer.schema_docs --write"


def test_every_table_column_and_view_of_the_specs_is_in_the_docs() -> None:
    schema = current_schema()
    storage = (REPO / "docs" / "storage.md").read_text(encoding="utf-8")
    sql = (REPO / "docs" / "sql.md").read_text(encoding="utf-8")
    columns = storage[storage.index("<!-- schema:columns begin"):storage.index("<!-- schema:columns end")]
    for table in schema.tables:
        assert f"| `{table.name}` | " in storage
        section = columns[columns.index(f"#### `{table.name}`\n"):].split("\n#### ")[0]
        names = [line.split("|")[1].strip().strip("`") for line in section.splitlines()[4:] if line.startswith("| `")]
        assert names == list(table.column_names), table.name
    for mv in schema.materialized_views:
        assert f"| `{mv.name}` | `{mv.source}` | `{mv.target}` |" in storage
    for view in schema.views:
        assert f"| `{view.name}` | " in storage
    from runstream.consumer.migrations import FACT_TABLES

    for fact in FACT_TABLES:
        assert f"| `{fact.name}` | " in sql and ", ".join(fact.column_names) in sql


def test_a_column_added_to_a_spec_makes_the_docs_stale_until_regenerated(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    for name in ("storage.md", "sql.md"):
        shutil.copy(REPO / "docs" / name, tmp_path / "docs" / name)
    schema = current_schema()
    runs = next(table for table in schema.tables if table.name == "runs")
    grown = dataclasses.replace(runs, columns=(*runs.columns, "queue LowCardinality(String) DEFAULT ''"))
    changed = Schema(tuple(grown if t is runs else t for t in schema.tables), schema.materialized_views,
                     schema.views)
    assert schema_docs.stale(tmp_path, schema) == []
    assert sorted(schema_docs.stale(tmp_path, changed)) == [tmp_path / "docs" / "sql.md",
                                                           tmp_path / "docs" / "storage.md"]
    for path, text in schema_docs.generate(tmp_path, changed).items():
        path.write_text(text, encoding="utf-8")
    assert schema_docs.stale(tmp_path, changed) == []
    storage = (tmp_path / "docs" / "storage.md").read_text(encoding="utf-8")
    assert "| `queue` | `LowCardinality(String)` | `''` |  |" in storage
    outside = storage.replace(schema_docs.columns_block(changed), "").replace(schema_docs.tables_block(changed), "")
    original = (REPO / "docs" / "storage.md").read_text(encoding="utf-8")
    assert outside == original.replace(schema_docs.columns_block(schema), "").replace(
        schema_docs.tables_block(schema), ""), "only the generated parts change"


def test_the_command_checks_then_writes(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    for name in ("storage.md", "sql.md"):
        shutil.copy(REPO / "docs" / name, tmp_path / "docs" / name)
    sql = tmp_path / "docs" / "sql.md"
    sql.write_text(sql.read_text(encoding="utf-8").replace("| `metric_points` | ", "| `metric_pts` | ", 1),
                   encoding="utf-8")
    command = [sys.executable, "-m", "runstream.consumer.schema_docs", "--root", str(tmp_path)]
    checked = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert checked.returncode == 1 and f"{sql}: schema tables differ" in checked.stderr
    written = subprocess.run([*command, "--write"], capture_output=True, text=True, timeout=60, check=False)
    assert written.returncode == 0 and f"rewrote the schema tables of {sql}" in written.stdout
    assert sql.read_text(encoding="utf-8") == (REPO / "docs" / "sql.md").read_text(encoding="utf-8")
    again = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert again.returncode == 0 and again.stderr == ""


def test_missing_markers_are_named() -> None:
    with pytest.raises(ValueError, match=r"docs/x.md: markers of schema block 'columns' not found"):
        schema_docs.render("# no markers here\n", "columns", "body", path="docs/x.md")


def test_column_definitions_split_into_type_default_and_codec() -> None:
    assert parse_column("step Int64 CODEC(DoubleDelta, LZ4)") == schema_docs.Column(
        "step", "Int64", "", "CODEC(DoubleDelta, LZ4)")
    assert parse_column("resumed Bool DEFAULT false") == schema_docs.Column("resumed", "Bool", "false", "")
    nested = "data_versions Array(Tuple(name String, version Nullable(String)))"
    assert parse_column(nested).type == "Array(Tuple(name String, version Nullable(String)))"
    assert parse_column("note String DEFAULT 'a CODEC(b)' CODEC(ZSTD(1))") == schema_docs.Column(
        "note", "String", "'a CODEC(b)'", "CODEC(ZSTD(1))")
    with pytest.raises(ValueError, match=r"column definition 'lonely': expected 'name Type'"):
        parse_column("lonely")
