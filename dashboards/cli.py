"""The `runstream dashboards` command; `runstream/cli.py` adds it with `add_parsers`.

dashboards build (Grafana JSON, Grafana and Prometheus alert rules), dashboards preview (PNGs of the
dashboards on demo data, from a throw-away chDB that the preview loads itself).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from runstream.consumer.clickhouse_settings import add_clickhouse_option

Handler = Callable[[argparse.Namespace], int]


def add_parsers(commands: Any) -> None:
    dashboards = commands.add_parser("dashboards", help="Grafana dashboards and alert rules")
    sub = dashboards.add_subparsers(dest="dashboards_command", required=True, metavar="COMMAND")
    build = sub.add_parser("build", help="write the dashboards' JSON and the alert rules",
                           description="Write runstream-{runs,gpu-cost,drift,pipeline}.json, "
                           "grafana-alert-rules.json and runstream-alerts.yml (Prometheus) into --out.")
    build.add_argument("--out", type=Path, required=True, metavar="DIR")
    preview = sub.add_parser("preview", help="draw PNG previews of the dashboards from demo data",
                             description="Load the demo data set into a throw-away chDB, run every ClickHouse "
                             "panel's query as Grafana would, and draw each dashboard (Runs, GPU fleet & cost, "
                             "Drift) to DIR/<uid>.png with matplotlib; with --clickhouse (or RUNSTREAM_CLICKHOUSE), "
                             "draw that database's data instead. The Pipeline dashboard reads Prometheus "
                             "and is not previewed.")
    preview.add_argument("--out", type=Path, required=True, metavar="DIR")
    add_clickhouse_option(preview)  # given (or RUNSTREAM_CLICKHOUSE / [clickhouse] dsn): preview that database


def cmd_dashboards(args: argparse.Namespace) -> int:
    if args.dashboards_command == "preview":
        from runstream.consumer.clickhouse_settings import clickhouse_settings
        from runstream.consumer.migrations import require_migrated
        from runstream.dashboards import preview

        settings = clickhouse_settings(args)
        if "dsn" in settings.model_fields_set:  # a ClickHouse was named: its data, read only
            client, database = settings.connect(create_database=False)
            require_migrated(client, database)
            drawn = preview.previews(client, database, args.out)
        else:
            drawn = preview.demo_previews(args.out)
        for uid, results in drawn.items():
            empty = [r.query.title for r in results if not r.rows]
            print(f"{args.out / (uid + '.png')}" + (f"  (no rows: {', '.join(empty)})" if empty else ""))
        for uid, why in preview.NOT_PREVIEWABLE.items():
            print(f"{uid}: not previewed ({why})")
        return 0

    from runstream.dashboards.build import build

    for path in build(args.out):
        print(path)
    return 0


COMMANDS: dict[str, Handler] = {
    "dashboards": cmd_dashboards,
}
