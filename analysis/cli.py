"""The analysis commands of the `runstream` CLI; `runstream/cli.py` adds them with `add_parsers`.

runs, compare, best, importance, reproduce, report: each takes --format table|csv|json and
--clickhouse DSN, reports mistakes as one readable line naming the field and value (exit 2 through
runstream.cli.main), and shows progress on stderr when it takes over a second and stderr is a terminal
(or --progress; runstream.progress).
"""

from __future__ import annotations

import argparse
import functools
import re
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

from runstream.analysis import curation, curves, export, histograms, ranks
from runstream.analysis.filters import ATTRIBUTES
from runstream.consumer.clickhouse_settings import add_clickhouse_option
from runstream.output import FORMATS, dumps_json, render
from runstream.progress import Stages, add_option

Handler = Callable[[argparse.Namespace], int]


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", choices=FORMATS, default="table", help="output format (default %(default)s)")
    add_clickhouse_option(parser)
    add_option(parser)


_WHERE_HELP = """\
filter, e.g. "params.lr < 0.01 and metrics.acc > 0.9". Fields: params.KEY, metrics.NAME (final
value), best.NAME (best value: the declared goal, else min for loss-like names, else max), tags.KEY,
{fields}. Operators: = != < <= > >=,
in (...), not in (...), like 'pat%%', is [not] null, and, or, not, parentheses. Values are numbers,
'quoted strings', true, false. A run lacking the field never matches. A name with characters
other than A-Z a-z 0-9 _ (unicode, '-', spaces) goes in backquotes: metrics.`损失` > 0,
params.`warmup-steps` >= 100. status is running, stalled (heartbeats arrive, the step stands still for
[monitor] stall_after_s), lost (no heartbeat for 3 intervals, no finish), ok, failed or killed."""
_WHERE_HELP = _WHERE_HELP.replace("{fields}", textwrap.fill(", ".join(ATTRIBUTES), 100))  # the filter's own list


def add_parsers(commands: Any) -> None:
    """Register the analysis subcommands on the CLI's subparsers object."""
    runs = commands.add_parser(
        "runs", help="list runs with params and final/best metrics, filtered and sorted",
        description="One row per run: params, final metrics (metrics.NAME), best metrics (best.NAME) and "
        "GPU-hours, read from the run_overview view.", formatter_class=argparse.RawTextHelpFormatter)
    runs.add_argument("--project", default=None, help="only runs of this project (default: all)")
    runs.add_argument("--where", default=None, metavar="FILTER", help=_WHERE_HELP)
    runs.add_argument("--sort", default=None, metavar="FIELDS",
                      help="comma-separated fields, '-' for descending, e.g. -metrics.acc,params.lr "
                      "(missing values last; default: start time)")
    runs.add_argument("--limit", type=int, default=None, help="at most this many runs")
    runs.add_argument("--group", default=None, metavar="G", help="only runs of this group (init(group=...))")
    runs.add_argument("--sweep", default=None, metavar="S", help="only runs of this sweep (init(sweep=...))")
    runs.add_argument("--archived", action="store_true", help="include archived runs (runstream archive)")
    _common(runs)
    # `--sort -metrics.acc`: argparse would read a value starting with '-' as an unknown option. Its
    # hook for negative numbers (a private attribute, present in 3.11-3.14) lets such words through
    # as values; registered options such as -h are matched before it is consulted.
    runs._negative_number_matcher = re.compile(r"^-[A-Za-z_`]")

    compare = commands.add_parser(
        "compare", help="params and metrics of runs side by side, differences marked",
        description="Params side by side, rows where the runs differ marked '*' in the differs column, then "
        "each metric at its final step and at its best step (the declared goal, else min for loss-like names, "
        "else max).")
    compare.add_argument("runs", nargs="+", metavar="RUN", help="run id or (unique) run name")
    compare.add_argument("--metric", action="append", default=None, metavar="M",
                         help="only this metric (repeatable; default: all)")
    _common(compare)

    best = commands.add_parser(
        "best", help="the leaderboard of a project by a metric",
        description="Runs ranked by the best finite value each reached of METRIC; equal values rank by the "
        "earlier step reaching them. NaN and ±Inf are never ranked: runs that never logged a finite value of "
        "METRIC are left out, and their number is printed under the table (on stderr for csv and json).")
    best.add_argument("--project", required=True)
    best.add_argument("--metric", required=True, metavar="M")
    best.add_argument("--mode", choices=("min", "max"), default=None,
                      help="min or max is best (default: the goal declared with define_metric, else min for loss-like "
                           "names such as loss, error, mse; else max)")
    best.add_argument("--limit", type=int, default=10, help="show this many runs (default %(default)s; 0: all)")
    best.add_argument("--archived", action="store_true", help="rank archived runs too (runstream archive)")
    _common(best)

    importance = commands.add_parser(
        "importance", help="which params go along with a metric across runs (correlation, not causation)",
        description="For each param: Spearman rank correlation with the metric's best value (numeric params) or "
        "the metric's mean per value and eta squared (categorical params), across the project's runs. "
        "This is correlation, not causation. Only finite values count: runs without one are left out and counted.")
    importance.add_argument("--project", required=True)
    importance.add_argument("--metric", required=True, metavar="M")
    importance.add_argument("--mode", choices=("min", "max"), default=None,
                            help="which best value of each run to use (default: the declared goal, else min for "
                                 "loss-like names, else max)")
    _common(importance)

    reproduce = commands.add_parser(
        "reproduce", help="what it takes to run a run again: commit, command, config, data, hardware",
        description="The git commit, command line, params as a config file, data versions and hardware a run "
        "recorded, and a shell line that launches it again.")
    reproduce.add_argument("run", metavar="RUN", help="run id or (unique) run name")
    reproduce.add_argument("--config-out", type=Path, default=None, metavar="FILE",
                           help="also write the params, nested, as a JSON config file")
    _common(reproduce)

    report = commands.add_parser(
        "report", help="write a self-contained HTML report of a project (opens offline)",
        description="One HTML file with inline SVG plots: curves overlaid per metric, parallel coordinates of "
        "params against a metric, GPU-hours and cost per run. No network access is needed to open it.")
    report.add_argument("--project", required=True)
    report.add_argument("--out", type=Path, default=None, metavar="FILE",
                        help="where to write it (default report-PROJECT.html)")
    report.add_argument("--metric", default=None, metavar="M",
                        help="metric of the leaderboard and the parallel coordinates (default: the first by name)")
    report.add_argument("--mode", choices=("min", "max"), default=None)
    report.add_argument("--price-per-gpu-hour", type=float, default=2.0, metavar="USD",
                        help="for the cost column (default %(default)s)")
    report.add_argument("--points", type=int, default=500,
                        help="buckets per curve, each drawn with its min, max and last (default %(default)s)")
    report.add_argument("--x", default=None, metavar="AXIS",
                        help="curves' x-axis: step, time, relative or a logged metric (default: each metric's "
                        "declared step_metric, else step)")
    _common(report)

    lineage = commands.add_parser(
        "lineage", help="a run's fork tree: ancestors up to the root and every fork of it, with fork steps",
        description="The fork tree of RUN (init(fork_from=..., fork_step=...)): its ancestors up to the root, "
        "the run and all its descendants, each with its run id, name, fork step and status. A fork's curve "
        "is its parent's up to the fork step, then its own.")
    lineage.add_argument("run", metavar="RUN", help="run id or (unique) run name")
    lineage.add_argument("--format", choices=("tree", *FORMATS), default="tree",
                         help="tree (indented text), or rows as table, csv or json (default %(default)s)")
    add_clickhouse_option(lineage)
    add_option(lineage)

    curation.add_parsers(commands)  # tag, note, archive, delete
    curves.add_parsers(commands)  # curve
    histograms.add_parsers(commands)  # histograms
    ranks.add_parsers(commands)  # ranks, stragglers
    export.add_parsers(commands)  # export


def clickhouse_error_line(error: BaseException) -> str:
    """ClickHouse's message and code on one line: its messages span lines (an HTTP preamble, the
    query echoed back), which a terminal user should not have to scroll through a traceback for."""
    text = " ".join(str(error).split()) or type(error).__name__
    code = getattr(error, "code", None)
    if code is not None and f"Code: {code}" not in text:
        text = f"{text} (code {code})"
    return f"ClickHouse: {text}"


def is_clickhouse_error(error: BaseException) -> bool:
    """An error raised by the ClickHouse driver or the embedded engine (bad SQL, an unknown table...)."""
    return type(error).__module__.startswith(("clickhouse_connect", "chdb"))


def clickhouse_errors(handler: Handler) -> Handler:
    """Server errors (bad SQL, unknown table...) become one readable line (the CLI prints it and exits 2),
    not a traceback."""

    @functools.wraps(handler)
    def wrapped(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except Exception as error:
            if is_clickhouse_error(error):
                raise RuntimeError(clickhouse_error_line(error)) from None
            raise

    return wrapped


def _open(args: argparse.Namespace, progress: Stages) -> tuple[Any, str]:
    from runstream.consumer.clickhouse_settings import connect_clickhouse
    from runstream.consumer.migrations import require_migrated

    progress.step("connecting")
    client, database = connect_clickhouse(args)  # a read: no DDL, and a database without the views is refused
    require_migrated(client, database)
    return client, database


def _print(columns: list[str], rows: list[list[Any]], fmt: str) -> None:
    print(render(columns, rows, fmt))


@clickhouse_errors
def cmd_runs(args: argparse.Namespace) -> int:
    from runstream.analysis import queries

    with Stages("runstream runs", show=args.progress) as progress:
        client, db = _open(args, progress)
        progress.step("querying")
        table = queries.runs(client, db, project=args.project, where=args.where, sort=args.sort, limit=args.limit,
                             group=args.group, sweep=args.sweep, include_archived=args.archived)
    _print(table.columns, table.rows, args.format)
    return 0


@clickhouse_errors
def cmd_compare(args: argparse.Namespace) -> int:
    from runstream.analysis import queries

    with Stages("runstream compare", show=args.progress) as progress:
        client, db = _open(args, progress)
        progress.step("querying")
        table = queries.compare(client, db, args.runs, args.metric)
    _print(table.columns, table.rows, args.format)
    return 0


@clickhouse_errors
def cmd_best(args: argparse.Namespace) -> int:
    from runstream.analysis import queries

    with Stages("runstream best", show=args.progress) as progress:
        client, db = _open(args, progress)
        progress.step("ranking")
        table = queries.leaderboard(client, db, args.project, args.metric, args.mode, args.limit or None,
                                    include_archived=args.archived)
    _print(table.columns, table.rows, args.format)
    _left_out_note("runstream best", args, table.left_out)
    return 0


def _left_out_note(command: str, args: argparse.Namespace, left_out: int) -> None:
    """Say how many runs a ranking left out for never logging a finite value: under a table, and on
    stderr for csv/json so that stdout stays machine-readable."""
    from runstream.analysis.queries import left_out_note

    note = left_out_note(args.metric, left_out)
    if not note:
        return
    if args.format == "table":
        print(f"\n{note}")
    else:
        print(f"{command}: {note}", file=sys.stderr)


@clickhouse_errors
def cmd_importance(args: argparse.Namespace) -> int:
    from runstream.analysis.importance import NOTE, importance

    with Stages("runstream importance", show=args.progress) as progress:
        client, db = _open(args, progress)
        progress.step("correlating")
        table = importance(client, db, args.project, args.metric, args.mode)
    _print(table.columns, table.rows, args.format)
    _left_out_note("runstream importance", args, table.left_out)
    if args.format == "table":
        print(f"\nNote: {NOTE}")
    else:  # keep stdout machine-readable; the caveat still reaches the reader
        print(f"runstream importance: {NOTE}", file=sys.stderr)
    return 0


@clickhouse_errors
def cmd_reproduce(args: argparse.Namespace) -> int:
    from runstream.analysis.reproduce import as_rows, reproduce

    with Stages("runstream reproduce", show=args.progress) as progress:
        client, db = _open(args, progress)
        progress.step("reading the run")
        info = reproduce(client, db, args.run)
    if args.config_out is not None:
        args.config_out.write_text(dumps_json(info["config"], sort_keys=True) + "\n", encoding="utf-8")
    if args.format == "json":
        print(dumps_json(info))
    else:
        _print(["field", "value"], as_rows(info), args.format)
    if args.config_out is not None:
        print(f"config written to {args.config_out}", file=sys.stderr)
    return 0


@clickhouse_errors
def cmd_report(args: argparse.Namespace) -> int:
    from runstream.analysis.report import write_report

    if args.points < 1:
        raise ValueError(f"--points: expected at least 1 bucket per curve, got {args.points}")
    out = args.out or Path(f"report-{args.project}.html")
    with Stages("runstream report", show=args.progress) as progress:
        client, db = _open(args, progress)
        path = write_report(client, db, args.project, out, metric=args.metric, mode=args.mode,
                            price_per_gpu_hour=args.price_per_gpu_hour, points=args.points, x=args.x,
                            step=progress.step)
    size = path.stat().st_size
    _print(["report", "project", "bytes"], [[str(path.resolve()), args.project, size]], args.format)
    return 0


@clickhouse_errors
def cmd_lineage(args: argparse.Namespace) -> int:
    from runstream.analysis import lineage, queries

    with Stages("runstream lineage", show=args.progress) as progress:
        client, db = _open(args, progress)
        progress.step("reading the fork tree")
        run_id = queries.resolve_runs(client, db, [args.run])[0][0]
        nodes = lineage.lineage(client, db, run_id)
    if args.format == "tree":
        print(lineage.render_tree(nodes))
    else:
        _print(lineage.LINEAGE_COLUMNS, [node.row() for node in nodes], args.format)
    return 0


COMMANDS: dict[str, Handler] = {
    "runs": cmd_runs,
    "compare": cmd_compare,
    "best": cmd_best,
    "importance": cmd_importance,
    "reproduce": cmd_reproduce,
    "report": cmd_report,
    "lineage": cmd_lineage,
    **{name: clickhouse_errors(handler) for name, handler in curation.COMMANDS.items()},
    **{name: clickhouse_errors(handler) for name, handler in curves.COMMANDS.items()},
    **{name: clickhouse_errors(handler) for name, handler in histograms.COMMANDS.items()},
    **{name: clickhouse_errors(handler) for name, handler in ranks.COMMANDS.items()},
    **{name: clickhouse_errors(handler) for name, handler in export.COMMANDS.items()},
}
