"""The monitoring commands of the `runstream` CLI; `runstream/cli.py` adds them with `add_parsers`.

monitor (Prometheus gauges of drift, performance, cost and budgets), cost load / cost report /
cost budgets, drift (scores as a table). They read (and `cost load` inserts into) a migrated
database; none of them runs DDL: a database without the tables gets "run `runstream migrate`".
"""

from __future__ import annotations

import argparse
import datetime as dt
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from runstream.analysis.cli import clickhouse_errors
from runstream.consumer.clickhouse_settings import add_clickhouse_option, connect_clickhouse
from runstream.output import FORMATS, render

Handler = Callable[[argparse.Namespace], int]


_clickhouse = add_clickhouse_option  # the one --clickhouse (credentials from RUNSTREAM_CLICKHOUSE_USER/_PASSWORD)


def _connect(args: argparse.Namespace) -> tuple[Any, str]:
    from runstream.consumer.migrations import require_migrated

    client, database = connect_clickhouse(args)
    require_migrated(client, database)
    return client, database


def add_parsers(commands: Any) -> None:
    monitor = commands.add_parser(
        "monitor", help="export drift, performance, GPU cost, budget and run status gauges to Prometheus",
        description="Every --interval seconds, compute drift scores (PSI, KS) and live performance over the "
        "trailing --drift-window, GPU cost burn rates, budget usage, idle-GPU cost and run status (runs by status, "
        "stalled runs, GPUs of lost runs) in ClickHouse, and serve them on /metrics (plus /healthz, /readyz). "
        "deploy/prometheus/runstream-alerts.yml alerts on them.")
    _clickhouse(monitor)
    monitor.add_argument("--listen", default=None, metavar="HOST:PORT",
                         help="where to serve (default :9109) [env RUNSTREAM_MONITOR_LISTEN; [monitor] listen]")
    monitor.add_argument("--interval", type=float, default=None, metavar="SECONDS",
                         help="refresh period (default 30) [env RUNSTREAM_MONITOR_INTERVAL; [monitor] interval_s]")
    monitor.add_argument("--drift-window", type=int, default=None, metavar="SECONDS",
                         help="drift and performance over this trailing window (default 3600) "
                         "[env RUNSTREAM_MONITOR_DRIFT_WINDOW; [monitor] drift_window_s]")

    cost = commands.add_parser("cost", help="GPU price table, cost reports and budgets")
    cost_sub = cost.add_subparsers(dest="cost_command", required=True, metavar="COMMAND")
    load = cost_sub.add_parser("load", help="load a price/budget YAML into ClickHouse (replaces the previous one)")
    load.add_argument("prices", type=Path, metavar="PRICES_YAML")
    _clickhouse(load)
    report = cost_sub.add_parser("report", help="GPU-hours, idle time, energy and $ per run, project, user or day")
    report.add_argument("--by", choices=("project", "user", "run_id", "day"), default="project")
    report.add_argument("--days", type=float, default=30.0, help="over the last DAYS days (default 30)")
    report.add_argument("--format", choices=FORMATS, default="table")
    _clickhouse(report)
    budgets = cost_sub.add_parser("budgets", help="month-to-date spend, burn rate and projection per project")
    budgets.add_argument("--format", choices=FORMATS, default="table")
    _clickhouse(budgets)

    drift = commands.add_parser("drift", help="drift scores per model, version, feature and window")
    drift.add_argument("--hours", type=float, default=24.0, help="over the last HOURS hours (default 24)")
    drift.add_argument("--window", type=int, default=3600, metavar="SECONDS", help="window length (default 3600)")
    drift.add_argument("--format", choices=FORMATS, default="table")
    _clickhouse(drift)


def cmd_monitor(args: argparse.Namespace) -> int:
    from runstream.consumer.health_server import HealthServer
    from runstream.monitoring.exporter import Exporter
    from runstream.monitoring.settings import ExporterSettings

    settings = ExporterSettings.load({"listen": args.listen, "interval_s": args.interval,
                                      "drift_window_s": args.drift_window}, config_file=args.config)
    client, database = _connect(args)
    monitor = Exporter(client, database, settings)
    server = HealthServer(settings.listen, monitor.registry, alive=lambda: True, ready=monitor.healthy)
    server.start()
    print(f"runstream monitor: serving /metrics on port {server.port}, refreshing every {settings.interval_s:g} s",
          flush=True)
    stop = threading.Event()
    def on_signal(*_: object) -> None:
        monitor.stop()
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    thread = monitor.start()
    stop.wait()
    thread.join(timeout=30)
    server.stop()
    return 0


@clickhouse_errors
def cmd_cost(args: argparse.Namespace) -> int:
    from runstream.monitoring import cost

    client, database = _connect(args)
    if args.cost_command == "load":
        table = cost.load_price_file(args.prices)
        cost.store_price_table(client, database, table)
        print(f"loaded {len(table.prices)} prices and {len(table.budgets)} budgets into {database}")
        return 0
    if args.cost_command == "report":
        end = dt.datetime.now(dt.UTC)
        rows = cost.cost_by(client, database, args.by, start=end - dt.timedelta(days=args.days), end=end)
    else:
        rows = cost.budget_status(client, database)
    columns = list(rows[0]) if rows else []
    print(render(columns, [[row[c] for c in columns] for row in rows], args.format))
    return 0


@clickhouse_errors
def cmd_drift(args: argparse.Namespace) -> int:
    from runstream.monitoring import drift

    client, database = _connect(args)
    end = dt.datetime.now(dt.UTC)
    rows = drift.drift_scores(client, database, start=end - dt.timedelta(hours=args.hours), end=end,
                              window_s=args.window)
    columns = ["model", "version", "feature", "kind", "window_start", "samples", "psi", "ks"]
    print(render(columns, [[row[c] for c in columns] for row in rows], args.format))
    return 0


COMMANDS: dict[str, Handler] = {
    "monitor": cmd_monitor,
    "cost": cmd_cost,
    "drift": cmd_drift,
}
