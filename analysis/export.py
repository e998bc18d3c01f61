"""`runstream export` and `Client.export`: a project's runs, params and full-resolution points as files.

    runstream export --project vision --where "params.lr < 0.01" --format parquet --out vision-export

What it owns: which tables an export holds and with which columns (SOURCES), reading them from
ClickHouse in blocks, and the three file writers (Parquet, CSV, JSON Lines). One file per table, or
with `--partition-by run` one folder per run (`run_id=<id>/points.parquet`, ...):

- runs: one row per run, as `runstream runs` (and `Client.runs(output="arrow")`) lists it: status,
  labels, params.*, metrics.* (final), best.*, gpu_hours. Always written.
- params: (run_id, key, value_type, value_number, value_string, updated_at), latest value per key.
- points: every stored point (run_id, metric, step, value, time, attempt), a step logged again keeping
  its latest value (`FINAL`), as every view reads it. A fork's file holds its own points only.
- rank_points, histograms, definitions: the other ranks' points, the histograms and the declared
  metrics (issue 14), written when the runs have any.

Streaming: each table is read with ClickHouse's Native format, block by block (about 65,000 rows;
clickhouse-connect's `query_column_block_stream`, which streams on chDB too, where its Arrow stream
is read whole first), and each block is written before the next is read, so an export of any size
holds a few blocks in memory. Parquet row groups collect up to ROW_GROUP_ROWS rows.

Values are exact in every format. Parquet keeps NaN, +Inf and -Inf natively and null apart from NaN.
CSV (runstream.output's spelling): floats as their shortest round-trip text, NaN/+Inf/-Inf as `nan`,
`inf`, `-inf`, null as an empty field (empty text as `""`), times as `2026-12-02 13:25:31.865308Z` (UTC),
lists as JSON text. pyarrow reads it back exactly with READ_CSV_OPTIONS (its default would read `nan`
as null). JSON Lines: strict JSON (RFC 8259), NaN/+Inf/-Inf as the strings "NaN", "Infinity",
"-Infinity" (Python's `float()` reads them), null as null, times as ISO 8601 text.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from runstream.output import JSON_INFINITY, JSON_NAN, JSON_NEG_INFINITY

if TYPE_CHECKING:  # pyarrow comes with the server extra: imported where used, so the bare CLI lists the command
    import pyarrow as pa

    from runstream.analysis import queries

EXPORT_FORMATS = ("parquet", "csv", "jsonl")
PARTITIONS = ("run",)
#: Rows per Parquet row group: blocks are collected up to this many before a row group is written.
ROW_GROUP_ROWS = 262_144
#: What pyarrow needs to read an exported CSV back exactly: only an empty field is null (its default
#: also reads `nan`, `NaN`, `NA`, `null` ... as null), and a quoted empty field is the empty text.
READ_CSV_OPTIONS: dict[str, Any] = {"null_values": [""], "strings_can_be_null": True,
                                    "quoted_strings_can_be_null": False}


@dataclass(frozen=True)
class Column:
    """One exported column: its name, the SQL that reads it, and its Arrow type."""

    name: str
    sql: str
    kind: str  # string, int64, uint32, uint64, float64, time (UTC, microseconds), list<float64>, ...

    @property
    def type(self) -> pa.DataType:
        return arrow_type(self.kind)


@dataclass(frozen=True)
class Source:
    """An exported table read from ClickHouse `FINAL` (one row per identity, the latest version)."""

    name: str  # the file's stem
    table: str
    columns: tuple[Column, ...]
    order_by: str  # starts with run_id: a partitioned export switches files as run_id changes
    always: bool = False  # written (empty) even when the runs have no rows in it

    @property
    def schema(self) -> pa.Schema:
        import pyarrow as pa

        return pa.schema([(c.name, c.type) for c in self.columns])


def arrow_type(kind: str) -> pa.DataType:
    import pyarrow as pa

    if kind == "time":
        return pa.timestamp("us", tz="UTC")
    if kind.startswith("list<"):
        return pa.list_(arrow_type(kind[5:-1]))
    return pa.type_for_alias(kind)


# Times travel as integer microseconds (toUnixTimestamp64Micro): exact, and no Python datetime per row.
_TIME_SQL = "toUnixTimestamp64Micro({})"
#: The Arrow kind of each ClickHouse type an exported column has (Nullable and LowCardinality unwrapped).
_KINDS = {"String": "string", "Int64": "int64", "UInt32": "uint32", "UInt64": "uint64", "Float64": "float64",
          "DateTime64(6, 'UTC')": "time"}


def _kind(declared: str) -> str:
    for wrapper in ("Nullable(", "LowCardinality("):
        if declared.startswith(wrapper):
            return _kind(declared[len(wrapper):-1])
    if declared.startswith("Array("):
        return f"list<{_kind(declared[len('Array('):-1])}>"
    return _KINDS[declared]


def _source(name: str, table: Any, order_by: str, *, always: bool = False) -> Source:
    """An exported table with the columns of its spec (runstream.consumer table specs: one definition of a
    table's columns), less the ones only the store uses (the raw rows' project)."""
    from runstream.consumer.run_projects import PROJECT_COLUMN
    from runstream.consumer.table_spec import column_name

    columns = []
    for definition in table.columns:
        column = column_name(definition)
        if column == PROJECT_COLUMN:
            continue
        declared = definition[len(column):].strip()
        declared = declared.split(" DEFAULT ")[0].split(" CODEC(")[0].strip()
        kind = _kind(declared)
        columns.append(Column(column, _TIME_SQL.format(column) if kind == "time" else column, kind))
    return Source(name, table.name, tuple(columns), order_by, always)


def _sources() -> tuple[Source, ...]:
    from runstream.consumer.metric_tables import METRIC_DEFINITIONS, METRIC_HISTOGRAMS, RANK_METRIC_POINTS
    from runstream.consumer.migrations import METRIC_POINTS, RUN_PARAMS

    return (
        _source("params", RUN_PARAMS, "run_id, key", always=True),
        _source("points", METRIC_POINTS, "run_id, metric, step", always=True),
        _source("rank_points", RANK_METRIC_POINTS, "run_id, metric, step, rank"),
        _source("histograms", METRIC_HISTOGRAMS, "run_id, metric, step, rank"),
        _source("definitions", METRIC_DEFINITIONS, "run_id, metric"),
    )


SOURCES: tuple[Source, ...] = _sources()
SOURCE_NAMES = ("runs", *(s.name for s in SOURCES))
POINTS = next(s for s in SOURCES if s.name == "points")


# --- reading ---------------------------------------------------------------------------------------

def _arrow(values: Any, kind: pa.DataType) -> pa.Array:
    """A Native block's column as Arrow: numeric columns arrive as array.array (zero-copy through numpy),
    nullable ones and text as lists; NaN stays NaN (from_pandas=False), None becomes null."""
    import numpy as np
    import pyarrow as pa

    if pa.types.is_timestamp(kind):
        return pa.array(np.asarray(values, dtype=np.int64)).cast(kind)
    if (pa.types.is_integer(kind) or pa.types.is_floating(kind)) and not isinstance(values, list | tuple):
        return pa.array(np.asarray(values), type=kind)
    if pa.types.is_list(kind):
        values = [list(v) for v in values]
    return pa.array(values, type=kind, from_pandas=False)


def read_batches(client: Any, db: str, source: Source, run_ids: Sequence[str],
                 metrics: Sequence[str] | None = None) -> Iterator[pa.RecordBatch]:
    """The source's rows of `run_ids` (and `metrics`, where the table has them), block by block.

    On chDB the client is busy until the stream is consumed or closed: the caller must not query with
    it in between (writing files is all an export does meanwhile)."""
    import pyarrow as pa

    if not run_ids:
        return
    conditions = ["run_id IN {runs:Array(String)}"]
    parameters: dict[str, Any] = {"runs": list(run_ids)}
    if metrics is not None:
        conditions.append("metric IN {metrics:Array(String)}")
        parameters["metrics"] = list(metrics)
    sql = (f"SELECT {', '.join(c.sql for c in source.columns)} FROM {db}.{source.table} FINAL "  # noqa: S608
           f"WHERE {' AND '.join(conditions)} ORDER BY {source.order_by}")
    schema = source.schema
    # No per-query settings: on chDB they would turn the stream into one materialised result.
    with client.query_column_block_stream(sql, parameters=parameters) as stream:
        for block in stream:
            arrays = [_arrow(values, column.type) for values, column in zip(block, source.columns, strict=True)]
            yield pa.RecordBatch.from_arrays(arrays, schema=schema)


def _estimate(client: Any, db: str, source: Source, run_ids: Sequence[str]) -> int:
    """Rows before deduplication (no FINAL: cheap): the progress bar's total, an upper bound."""
    if not run_ids:
        return 0
    sql = f"SELECT count() FROM {db}.{source.table} WHERE run_id IN {{runs:Array(String)}}"  # noqa: S608
    return int(client.query(sql, parameters={"runs": list(run_ids)}).result_rows[0][0])


def selected_runs(client: Any, db: str, *, project: str | None, where: str | None,
                  include_archived: bool) -> queries.Table:
    """The run list an export covers: the very rows `runstream runs --project P --where W` shows."""
    from runstream.analysis import queries

    return queries.runs(client, db, project=project, where=where, include_archived=include_archived)  # FilterError


# --- writing ---------------------------------------------------------------------------------------

def _json_texts(column: pa.Array) -> pa.Array:
    """Each value of `column` as its JSON text (no nulls: null is `null`), computed by Arrow, not per row.

    Floats: Arrow's shortest round-trip text, with `.0` added to integral ones (as Python's json writes
    them, so that readers keep the column a float column, and -0.0 keeps its sign); NaN/+Inf/-Inf as
    "NaN", "Infinity", "-Infinity". Text: json.dumps of each distinct value of the block. Times: ISO 8601
    with microseconds and +00:00. Other types (lists, maps) go through runstream.output.json_value."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from runstream.output import json_value

    kind = column.type
    if pa.types.is_floating(kind):
        text = pc.cast(column, pa.string())
        text = pc.if_else(pc.match_substring_regex(text, r"^-?[0-9]+$"), pc.binary_join_element_wise(text, ".0", ""),
                          text)
        for special, spelled in (("nan", JSON_NAN), ("inf", JSON_INFINITY), ("-inf", JSON_NEG_INFINITY)):
            text = pc.if_else(pc.equal(text, special), json.dumps(spelled), text)
    elif pa.types.is_integer(kind) or pa.types.is_boolean(kind):
        text = pc.cast(column, pa.string())
    elif pa.types.is_timestamp(kind):
        utc = column if kind.tz in ("UTC", None) else pc.cast(column, pa.timestamp(kind.unit, "UTC"))
        text = pc.binary_join_element_wise('"', pc.strftime(utc, format="%Y-%m-%dT%H:%M:%S"), '+00:00"', "")
    elif pa.types.is_string(kind) or pa.types.is_large_string(kind):
        encoded = pc.dictionary_encode(column)
        words = pa.array([json.dumps(word, ensure_ascii=False) for word in encoded.dictionary.to_pylist()],
                         type=pa.string())
        text = pc.take(words, encoded.indices)
    else:
        text = pa.array([json.dumps(json_value(v), allow_nan=False, ensure_ascii=False) for v in column.to_pylist()],
                        type=pa.string())
    return pc.fill_null(text, "null")


def _jsonl_bytes(batch: pa.RecordBatch) -> bytes:
    """The batch as JSON Lines: one object per row, keys in column order, joined by Arrow."""
    import numpy as np
    import pyarrow.compute as pc

    if batch.num_rows == 0:
        return b""
    parts: list[Any] = []
    for number, (name, column) in enumerate(zip(batch.schema.names, batch.columns, strict=True)):
        parts += [("{" if number == 0 else ",") + json.dumps(name, ensure_ascii=False) + ":", _json_texts(column)]
    lines = pc.binary_join_element_wise(*(parts or ["{"]), "}\n", "")
    _validity, offsets, data = lines.buffers()
    at = np.frombuffer(offsets, dtype=np.int32)[lines.offset: lines.offset + len(lines) + 1]
    return bytes(memoryview(data)[int(at[0]): int(at[-1])])


def _csv_ready(batch: pa.RecordBatch) -> pa.RecordBatch:
    """Arrow's CSV writer has no lists: those become JSON text."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if not any(pa.types.is_list(f.type) for f in batch.schema):
        return batch
    arrays = []
    for column, f in zip(batch.columns, batch.schema, strict=True):
        if pa.types.is_list(f.type):
            column = pc.if_else(pc.is_null(column), pa.scalar(None, pa.string()), _json_texts(column))
        arrays.append(column)
    return pa.RecordBatch.from_arrays(arrays, names=batch.schema.names)


def _csv_schema(schema: pa.Schema) -> pa.Schema:
    import pyarrow as pa

    return pa.schema([(f.name, pa.string() if pa.types.is_list(f.type) else f.type) for f in schema])


class _File:
    """One exported file, opened at its first batch."""

    def __init__(self, path: Path, fmt: str, schema: pa.Schema) -> None:
        import pyarrow.csv as pa_csv
        import pyarrow.parquet as pq

        self.path, self.fmt, self.schema = path, fmt, schema
        self.rows = 0
        self.batches = 0
        self._pending: list[pa.RecordBatch] = []
        self._pending_rows = 0
        path.parent.mkdir(parents=True, exist_ok=True)
        self._parquet: pq.ParquetWriter | None = None
        self._csv: pa_csv.CSVWriter | None = None
        self._text: BinaryIO | None = None
        if fmt == "parquet":
            self._parquet = pq.ParquetWriter(path, schema, compression="zstd")
        elif fmt == "csv":
            self._csv = pa_csv.CSVWriter(path, _csv_schema(schema))
        else:
            self._text = path.open("wb")

    def write(self, batch: pa.RecordBatch) -> None:
        self.rows += batch.num_rows
        self.batches += 1
        if self._parquet is not None:
            self._pending.append(batch)
            self._pending_rows += batch.num_rows
            if self._pending_rows >= ROW_GROUP_ROWS:
                self._flush_parquet()
        elif self._csv is not None:
            self._csv.write_batch(_csv_ready(batch))
        else:
            assert self._text is not None
            self._text.write(_jsonl_bytes(batch))

    def _flush_parquet(self) -> None:
        import pyarrow as pa

        if self._pending and self._parquet is not None:
            self._parquet.write_table(pa.Table.from_batches(self._pending, schema=self.schema),
                                      row_group_size=max(self._pending_rows, 1))
        self._pending, self._pending_rows = [], 0

    def close(self) -> int:
        """Close, and return the file's size in bytes."""
        if self._parquet is not None:
            self._flush_parquet()
            self._parquet.close()
        elif self._csv is not None:
            self._csv.close()
        elif self._text is not None:
            self._text.close()
        return self.path.stat().st_size


@dataclass
class FileSummary:
    path: Path
    table: str
    rows: int
    bytes: int
    batches: int  # blocks read from ClickHouse and written one by one


@dataclass
class ExportSummary:
    """What an export wrote. `peak_arrow_bytes`: the most memory Arrow held while writing, above what it
    held before (pyarrow's allocator, sampled after each block): the bound that streaming keeps, whatever
    the export's size (about a row group's worth for Parquet, a block's for CSV and JSON Lines)."""

    out: Path
    format: str
    runs: int
    files: list[FileSummary] = field(default_factory=list)
    peak_arrow_bytes: int = 0

    def by_table(self) -> list[list[Any]]:
        """[table, files, rows, bytes] per table, in export order."""
        rows: dict[str, list[Any]] = {}
        for f in self.files:
            row = rows.setdefault(f.table, [f.table, 0, 0, 0])
            row[1] += 1
            row[2] += f.rows
            row[3] += f.bytes
        return list(rows.values())

    @property
    def rows(self) -> int:
        return sum(f.rows for f in self.files)

    @property
    def bytes(self) -> int:
        return sum(f.bytes for f in self.files)


def _partition_folder(run_id: str) -> str:
    """`run_id=<id>`, the id percent-encoded where it is not a plain name (a run id from a scheduler
    could hold '/' or be '..')."""
    quoted = urllib.parse.quote(run_id, safe="-_.")
    if quoted in ("", ".", ".."):
        quoted = quoted.replace(".", "%2E") or "%00"
    return f"run_id={quoted}"


def _our_files(out: Path) -> list[Path]:
    """Files an export writes (by name), at the top of `out` and in its run folders: what --overwrite replaces."""
    names = {f"{name}.{ext}" for name in SOURCE_NAMES for ext in EXPORT_FORMATS}
    found = [p for p in out.iterdir() if p.is_file() and p.name in names]
    for folder in out.glob("run_id=*"):
        if folder.is_dir():
            found += [p for p in folder.iterdir() if p.is_file() and p.name in names]
    return found


def _check_out(out: Path, overwrite: bool) -> None:
    """Refuse a file, or a non-empty folder unless `overwrite` (checked before anything is queried)."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"out {str(out)!r}: exists and is not a folder")
    if not overwrite and out.is_dir() and any(out.iterdir()):
        raise ValueError(f"out {str(out)!r}: exists and is not empty; pass --overwrite (overwrite=True) to "
                         "replace the files an earlier export wrote there")


def _clear_out(out: Path) -> None:
    """Remove the files an earlier export wrote (runs.parquet, run_id=X/points.csv ...), never anything
    else, so that no stale table or run is mixed into the new export."""
    if out.is_dir():
        for path in _our_files(out):
            path.unlink()
        for folder in out.glob("run_id=*"):
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
    out.mkdir(parents=True, exist_ok=True)


def check_options(fmt: str, partition_by: str | None) -> None:
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"format: expected one of {', '.join(EXPORT_FORMATS)}, got {fmt!r}")
    if partition_by is not None and partition_by not in PARTITIONS:
        raise ValueError(f"partition_by: expected {' or '.join(PARTITIONS)} (or none), got {partition_by!r}")


def export(client: Any, db: str, out: Path | str, *, project: str | None = None, where: str | None = None,
           fmt: str = "parquet", partition_by: str | None = None, overwrite: bool = False,
           include_archived: bool = False, progress: bool | None = None,
           on_batch: Callable[[str, pa.RecordBatch], None] | None = None) -> ExportSummary:
    """Write the runs of `project` matching `where`, their params and points (and histograms, other ranks'
    points, declared metrics when there are any) under `out`. Everything is checked (format, folder,
    filter) before the first file is written. `on_batch(table, batch)` sees each block as it is written."""
    import pyarrow as pa

    from runstream.analysis.client import to_arrow  # pandas comes with it: an analysis dependency
    from runstream.progress import bar

    check_options(fmt, partition_by)
    out = Path(out)
    _check_out(out, overwrite)
    run_table = selected_runs(client, db, project=project, where=where, include_archived=include_archived)
    run_ids = [row[0] for row in run_table.rows]
    _clear_out(out)
    summary = ExportSummary(out=out, format=fmt, runs=len(run_ids))
    total = len(run_ids) + sum(_estimate(client, db, s, run_ids) for s in SOURCES)
    held_before = pa.total_allocated_bytes()
    peak = 0

    with bar("runstream export", total, unit=" rows", show=progress) as shown:
        runs_arrow = to_arrow(run_table)
        runs_file = _File(out / f"runs.{fmt}", fmt, runs_arrow.schema)
        for batch in runs_arrow.to_batches():
            runs_file.write(batch)
        _close(summary, "runs", runs_file)
        shown.update(len(run_ids))
        for source in SOURCES:
            files: dict[str, _File] = {}
            current: _File | None = None
            for batch in read_batches(client, db, source, run_ids):
                if on_batch is not None:
                    on_batch(source.name, batch)
                for run_id, piece in _split(batch, partition_by):
                    key = run_id or ""
                    if key not in files:
                        if current is not None:  # the rows come ordered by run: the last run's file is done
                            _close(summary, source.name, current)
                        folder = out / _partition_folder(run_id) if run_id is not None else out
                        files[key] = current = _File(folder / f"{source.name}.{fmt}", fmt, source.schema)
                    assert current is not None
                    current.write(piece)
                peak = max(peak, pa.total_allocated_bytes() - held_before)
                shown.update(batch.num_rows)
            if current is not None:
                _close(summary, source.name, current)
            elif source.always and partition_by is None:  # an empty table still gets its (empty) file
                empty = _File(out / f"{source.name}.{fmt}", fmt, source.schema)
                _close(summary, source.name, empty)
        shown.total = shown.n  # the estimate counted duplicates that FINAL collapsed (drawn at close)
    summary.peak_arrow_bytes = peak
    return summary


def _close(summary: ExportSummary, table: str, file: _File) -> None:
    size = file.close()
    summary.files.append(FileSummary(file.path, table, file.rows, size, file.batches))


def _split(batch: pa.RecordBatch, partition_by: str | None) -> Iterator[tuple[str | None, pa.RecordBatch]]:
    """The batch whole, or its slices of one run each (rows come ordered by run_id)."""
    import numpy as np
    import pyarrow.compute as pc

    if partition_by is None or batch.num_rows == 0:
        yield None, batch
        return
    ids = batch.column(0)
    changes = pc.not_equal(ids.slice(1), ids.slice(0, len(ids) - 1)).to_numpy(zero_copy_only=False)
    starts = [0, *(np.flatnonzero(changes) + 1).tolist(), len(ids)]
    for start, end in zip(starts, starts[1:], strict=False):
        yield ids[start].as_py(), batch.slice(start, end - start)


def points_arrow(client: Any, db: str, run_ids: Sequence[str], metrics: Sequence[str] | None = None) -> pa.Table:
    """Every stored point of the runs (FINAL), as the export's points file holds them."""
    import pyarrow as pa

    batches = list(read_batches(client, db, POINTS, run_ids, metrics))
    return pa.Table.from_batches(batches, schema=POINTS.schema)


def read_csv(path: str | Path) -> pa.Table:
    """An exported CSV read back with pyarrow, exactly (NaN stays NaN, empty is null)."""
    import pyarrow.csv as pa_csv

    return pa_csv.read_csv(path, convert_options=pa_csv.ConvertOptions(**READ_CSV_OPTIONS))


# --- the command -----------------------------------------------------------------------------------

def add_parsers(commands: Any) -> None:
    """`runstream export`, registered from runstream.analysis.cli `add_parsers`."""
    from runstream.analysis.cli import _WHERE_HELP
    from runstream.consumer.clickhouse_settings import add_clickhouse_option
    from runstream.progress import add_option

    parser = commands.add_parser(
        "export", help="write runs, params and every point of a project to Parquet, CSV or JSON Lines files",
        description="One file per table under --out (runs, params, points; rank_points, histograms, definitions "
        "when there are any), or one folder per run with --partition-by run. Full resolution, read and "
        "written in blocks (any size fits in memory). NaN and +/-Inf survive: Parquet natively; CSV as "
        "nan, inf, -inf (empty = null); JSON Lines as \"NaN\", \"Infinity\", \"-Infinity\".",
        formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--project", default=None, help="only runs of this project (default: all)")
    parser.add_argument("--where", default=None, metavar="FILTER", help=_WHERE_HELP)
    parser.add_argument("--format", choices=EXPORT_FORMATS, default="parquet", help="file format (default %(default)s)")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder to write (created)")
    parser.add_argument("--partition-by", choices=PARTITIONS, default=None,
                        help="one folder per run (run_id=ID/points.parquet ...) instead of one file per table")
    parser.add_argument("--overwrite", action="store_true",
                        help="write into a non-empty --out, replacing the files an earlier export wrote there")
    parser.add_argument("--archived", action="store_true", help="include archived runs (runstream archive)")
    add_clickhouse_option(parser)
    add_option(parser)


def cmd_export(args: argparse.Namespace) -> int:
    from runstream.analysis.cli import _open
    from runstream.output import render
    from runstream.progress import Stages

    check_options(args.format, args.partition_by)
    with Stages("runstream export", show=args.progress) as stages:
        client, db = _open(args, stages)
    summary = export(client, db, args.out, project=args.project, where=args.where, fmt=args.format,
                     partition_by=args.partition_by, overwrite=args.overwrite, include_archived=args.archived,
                     progress=args.progress)
    rows = [*summary.by_table(), ["total", len(summary.files), summary.rows, summary.bytes]]
    print(render(["table", "files", "rows", "bytes"], rows, "table"))
    print(f"{summary.runs} runs exported as {summary.format} to {summary.out.resolve()}", file=sys.stdout)
    return 0


COMMANDS = {"export": cmd_export}
