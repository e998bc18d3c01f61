"""Per-project retention of raw metric points and raw GPU/host samples, as ClickHouse TTLs (`runstream retention`).

`runstream retention set PROJECT --raw-days N` keeps the raw rows of PROJECT's runs (metric_points,
gpu_samples, host_samples) N days after their own time; the rollups (metric_summary_states,
gpu_held_slots, gpu_usage_hourly_states), run_summary and the run facts (runs, params, finishes,
attempts, curation) are kept forever, so the run list, the leaderboard and the summaries still answer
for a run whose raw points expired (`runstream.consumer.run_summary` keeps a summary whose raw points
are gone instead of recomputing it from what is left).

Mechanism (docs/capacity.md has the measurements): each raw row carries its run's `project`
(`runstream.consumer.run_projects`, filled by the sink), and each raw table gets one TTL rule per
project, `toDateTime(time) + INTERVAL N DAY DELETE WHERE project = 'p'`, next to the global
`sample_ttl_days` rule of the samples (`migrations.set_sample_ttl`), which stays as it was. A rule
names one project, so it can never drop a row of another; rows whose run's start was not stored when
they were written carry the project '' and are assigned theirs here before the rules are applied.

The rules themselves live in `retention_rules` (one row per project, ReplacingMergeTree by `set_at`;
0 days is a cleared rule): the TTL clauses are rendered from that table each time, so `set`, `clear`
and `runstream migrate --sample-ttl-days` compose instead of overwriting each other.

This is DDL: like `runstream migrate`, retention is schema owned by this command (the project's rule:
DDL only in `migrate`, in the consumer that owns the schema, and here).
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from runstream.consumer.run_projects import PROJECT_COLUMN, RAW_TABLES
from runstream.consumer.table_spec import EVERY_NODE, Table

RETENTION_RULES = Table(
    "retention_rules",
    (
        "project String",
        "raw_days UInt32",  # 0: cleared (raw rows kept forever)
        "set_at DateTime64(6, 'UTC')",
    ),
    "ReplacingMergeTree",
    "project",
    version="set_at",
    sharding=EVERY_NODE,
)

#: The longest retention a rule may have: `toDateTime(time) + INTERVAL N DAY` must stay below DateTime's
#: end (2106), or it would wrap around to 1970 and expire everything at once. Forever is `clear`.
MAX_RAW_DAYS = 3650
#: The time column every raw table's rules measure age from (as the global sample TTL does).
TIME_COLUMN = "time"

# How ClickHouse shows the global (unconditional) sample TTL in create_table_query: the one rule not
# followed by WHERE.
_GLOBAL_RULE = re.compile(r"toDateTime\(time\) \+ toIntervalDay\((\d+)\)(?!\s*WHERE)")


def parse_raw_days(value: object) -> int:
    """The number of days of a rule, refused unless a whole number from 1 to MAX_RAW_DAYS."""
    text = str(value).strip()
    if isinstance(value, bool) or not re.fullmatch(r"[+-]?\d+", text):
        raise ValueError(f"--raw-days: expected a whole number of days, got {value!r}")
    days = int(text)
    if days <= 0:
        raise ValueError(f"--raw-days: expected at least 1 day (`runstream retention clear` keeps raw rows "
                         f"forever), got {days}")
    if days > MAX_RAW_DAYS:
        raise ValueError(f"--raw-days: expected at most {MAX_RAW_DAYS} days (`runstream retention clear` keeps "
                         f"raw rows forever), got {days}")
    return days


def quote(text: str) -> str:
    """A ClickHouse string literal."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def raw_ttl_clause(table: str, rules: Mapping[str, int], sample_ttl_days: int | None = None) -> str:
    """The whole TTL clause of one raw table ('' for none): the global sample rule (samples only) and one
    rule per project, in project order so the text is stable."""
    from runstream.consumer.migrations import TABLES

    expires = any(spec.name == table and spec.expires for spec in TABLES)
    parts = []
    if expires and sample_ttl_days:
        parts.append(f"toDateTime({TIME_COLUMN}) + INTERVAL {int(sample_ttl_days)} DAY")
    for project, days in sorted(rules.items()):
        if days <= 0 or (expires and sample_ttl_days and days >= sample_ttl_days):
            continue  # cleared, or no shorter than the global rule that already drops these rows
        parts.append(f"toDateTime({TIME_COLUMN}) + INTERVAL {int(days)} DAY DELETE WHERE "
                     f"{PROJECT_COLUMN} = {quote(project)}")
    return "TTL " + ", ".join(parts) if parts else ""


def retention_rules(client: Any, database: str) -> dict[str, int]:
    """project -> raw days of every rule in force (cleared rules left out)."""
    rows = client.query(
        f"SELECT project, raw_days FROM {database}.retention_rules FINAL WHERE raw_days > 0"  # noqa: S608
    ).result_rows
    return {str(project): int(days) for project, days in rows}


def current_sample_ttl_days(client: Any, database: str) -> int | None:
    """The global sample TTL in force (`runstream migrate --sample-ttl-days`), read from the samples'
    DDL: the table is its one source of truth, set before retention rules existed or after."""
    from runstream.consumer.migrations import TABLES

    found: set[int] = set()
    for table in TABLES:
        if not table.expires:
            continue
        rows = client.query(
            "SELECT create_table_query FROM system.tables WHERE database = {db:String} AND name = {t:String}",
            parameters={"db": database, "t": table.name},
        ).result_rows
        match = _GLOBAL_RULE.search(str(rows[0][0])) if rows else None
        if match:
            found.add(int(match.group(1)))
    return min(found) if found else None


def apply_ttls(client: Any, database: str, *, sample_ttl_days: int | None = None,
               tables: tuple[str, ...] = RAW_TABLES) -> dict[str, str]:
    """Render and apply the TTL clause of each raw table from the rules stored; returns table -> clause.

    ClickHouse then materializes the TTL on the parts already stored (expired rows are deleted by that
    mutation and by later merges)."""
    from runstream.consumer.migrations import has_ttl

    rules = retention_rules(client, database)
    applied = {}
    for table in tables:
        clause = raw_ttl_clause(table, rules, sample_ttl_days)
        if clause:
            client.command(f"ALTER TABLE {database}.{table} MODIFY {clause}")
        elif has_ttl(client, database, table):
            client.command(f"ALTER TABLE {database}.{table} REMOVE TTL")
        applied[table] = clause
    return applied


def _refuse_cluster(client: Any, database: str) -> None:
    from runstream.consumer.migrations import is_cluster_managed

    if is_cluster_managed(client, database):
        raise RuntimeError(f"database {database!r} is laid out for a cluster: `runstream retention` manages "
                           "single-server databases only (set TTLs on the <table>_local tables ON CLUSTER)")


def _projects(client: Any, database: str) -> list[str]:
    rows = client.query(f"SELECT DISTINCT project FROM {database}.runs ORDER BY project").result_rows  # noqa: S608
    return [str(project) for (project,) in rows]


def _known_project(client: Any, database: str, project: str) -> None:
    """Refuse a project no stored run belongs to (a typo would otherwise set a rule that matches nothing)."""
    if not project:
        raise ValueError("project: expected a project name, got ''")
    known = _projects(client, database)
    if project not in known:
        listed = ", ".join(repr(name) for name in known[:10]) + (" ..." if len(known) > 10 else "")
        raise ValueError(f"project: no run of project {project!r} is stored (projects: {listed or 'none'})")


def _assign_projects(client: Any, database: str, project: str) -> int:
    """Give the raw rows written before their run's start was stored (project '') the project `project`
    where they belong to it; returns how many rows were assigned."""
    runs = f"SELECT run_id FROM {database}.runs WHERE project = {quote(project)}"  # noqa: S608
    assigned = 0
    for table in RAW_TABLES:
        where = f"{PROJECT_COLUMN} = '' AND run_id IN ({runs})"
        (count,), = client.query(f"SELECT count() FROM {database}.{table} WHERE {where}").result_rows  # noqa: S608
        if count:
            client.command(f"ALTER TABLE {database}.{table} UPDATE {PROJECT_COLUMN} = {quote(project)} "
                           f"WHERE {where} SETTINGS mutations_sync = 2")
            assigned += int(count)
    return assigned


def set_retention(client: Any, database: str, project: str, raw_days: object, *,
                  now: datetime | None = None) -> dict[str, Any]:
    """Keep the raw rows of `project` `raw_days` days; refuses bad input before writing anything."""
    days = parse_raw_days(raw_days)
    _refuse_cluster(client, database)
    _known_project(client, database, project)
    at = now or datetime.now(UTC)
    client.insert(f"{database}.retention_rules", [[project, days, at]], column_names=list(RETENTION_RULES.column_names))
    assigned = _assign_projects(client, database, project)
    applied = apply_ttls(client, database, sample_ttl_days=current_sample_ttl_days(client, database))
    return {"project": project, "raw_days": days, "set_at": at, "rows_assigned": assigned, "ttl": applied}


def clear_retention(client: Any, database: str, project: str, *, now: datetime | None = None) -> dict[str, Any]:
    """Keep the raw rows of `project` forever again (the global sample TTL, if any, still applies)."""
    _refuse_cluster(client, database)
    previous = retention_rules(client, database).get(project)
    if previous is None:
        raise ValueError(f"project: no retention is set for {project!r} (`runstream retention show` lists them)")
    at = now or datetime.now(UTC)
    client.insert(f"{database}.retention_rules", [[project, 0, at]], column_names=list(RETENTION_RULES.column_names))
    applied = apply_ttls(client, database, sample_ttl_days=current_sample_ttl_days(client, database))
    return {"project": project, "raw_days": previous, "cleared_at": at, "ttl": applied}


#: How `show` names the raw rows whose run's project was not known when they were written.
UNASSIGNED = "(no project yet)"
SHOW_COLUMNS = ["project", "raw_days", "set_at", "runs", "raw_points", "raw_samples", "oldest_raw_point"]


def show_retention(client: Any, database: str, project: str | None = None) -> tuple[list[str], list[list[Any]]]:
    """Per project: its rule (or 'forever'), when it was set, and what raw rows it still holds."""
    rules = client.query(
        f"SELECT project, raw_days, set_at FROM {database}.retention_rules FINAL WHERE raw_days > 0"  # noqa: S608
    ).result_rows
    rule_of = {str(name): (int(days), set_at) for name, days, set_at in rules}
    runs = dict(client.query(f"SELECT project, count() FROM {database}.runs FINAL GROUP BY project").result_rows)  # noqa: S608
    points = {str(name): (int(count), oldest) for name, count, oldest in client.query(
        f"SELECT project, count(), min(time) FROM {database}.metric_points GROUP BY project").result_rows}  # noqa: S608
    samples: dict[str, int] = {}
    for table in ("gpu_samples", "host_samples"):
        query = f"SELECT project, count() FROM {database}.{table} GROUP BY project"  # noqa: S608
        for name, count in client.query(query).result_rows:
            samples[str(name)] = samples.get(str(name), 0) + int(count)
    names = sorted(set(rule_of) | {str(name) for name in runs})
    if project is not None:
        if project not in names:
            raise ValueError(f"project: no run of project {project!r} is stored and no retention is set for it")
        names = [project]
    rows = []
    for name in names:
        days, set_at = rule_of.get(name, (None, None))
        count, oldest = points.get(name, (0, None))
        rows.append([name, days if days is not None else "forever", set_at, int(runs.get(name, 0)), count,
                     samples.get(name, 0), oldest if count else None])
    if project is None and (points.get("", (0, None))[0] or samples.get("")):
        # raw rows stored before their run's start (or before migration 8): `set` assigns them their project
        count, oldest = points.get("", (0, None))
        rows.append([UNASSIGNED, "forever", None, 0, count, samples.get("", 0), oldest if count else None])
    return SHOW_COLUMNS, rows


# --- the command ---------------------------------------------------------------------------------

_DESCRIPTION = """\
Per-project retention of raw rows: metric points (metric_points) and GPU/host samples (gpu_samples,
host_samples) older than N days are deleted by ClickHouse TTL rules, one per project. Rollups
(metric_summary_states, gpu_held_slots, gpu_usage_hourly_states), run_summary and the run facts are
kept forever: `runstream runs`, `best` and the summaries still answer for runs whose raw points
expired; curves (`runstream curve`, compare's curves, reports) of expired steps are gone.

This command runs DDL (ALTER TABLE ... MODIFY TTL): like `runstream migrate`, retention is schema
owned by this command. `set` applies the rules at once to the rows already stored (a mutation that
rewrites the raw tables' parts: docs/capacity.md has its cost)."""


def add_parsers(commands: Any) -> None:
    """Register `runstream retention set|show|clear` on the CLI's subparsers object."""
    from runstream.consumer.clickhouse_settings import add_clickhouse_option
    from runstream.output import FORMATS

    retention = commands.add_parser(
        "retention", help="per-project retention of raw metric points and samples (ClickHouse TTLs; DDL)",
        description=_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = retention.add_subparsers(dest="retention_action", required=True, metavar="{set,show,clear}")

    def common(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--format", choices=FORMATS, default="table", help="output format (default %(default)s)")
        add_clickhouse_option(parser)

    set_ = actions.add_parser("set", help="keep PROJECT's raw points and samples N days (then deleted by TTL)",
                              description="Keep the raw points and samples of PROJECT's runs N days after their "
                              f"time (1 to {MAX_RAW_DAYS}); replaces PROJECT's previous rule. DDL.")
    set_.add_argument("project", metavar="PROJECT")
    set_.add_argument("--raw-days", required=True, metavar="N", help="days to keep raw rows (whole number >= 1)")
    common(set_)
    show = actions.add_parser("show", help="the rules in force and the raw rows each project holds",
                              description="Each project's rule (or 'forever'), when it was set, its runs, and "
                              "the raw points and samples still stored. Read-only.")
    show.add_argument("project", metavar="PROJECT", nargs="?", default=None)
    common(show)
    clear = actions.add_parser("clear", help="keep PROJECT's raw rows forever again",
                               description="Remove PROJECT's rule (the global --sample-ttl-days of `runstream "
                               "migrate`, if set, still applies to samples). Rows already deleted do not come back. "
                               "DDL.")
    clear.add_argument("project", metavar="PROJECT")
    common(clear)


def cmd_retention(args: argparse.Namespace) -> int:
    """`runstream retention ...`: one table (or CSV/JSON) on stdout; a server error is one line (exit 2)."""
    from runstream.analysis.cli import clickhouse_errors

    return clickhouse_errors(_retention)(args)


def _retention(args: argparse.Namespace) -> int:
    from runstream.consumer.clickhouse_settings import connect_clickhouse
    from runstream.consumer.migrations import require_migrated
    from runstream.output import render

    if args.retention_action == "set":
        parse_raw_days(args.raw_days)  # refused before connecting
    client, database = connect_clickhouse(args)
    try:
        require_migrated(client, database)
        if args.retention_action == "show":
            columns, rows = show_retention(client, database, args.project)
        elif args.retention_action == "set":
            done = set_retention(client, database, args.project, args.raw_days)
            columns = ["project", "raw_days", "set_at", "rows_assigned", "tables"]
            rows = [[done["project"], done["raw_days"], done["set_at"].replace(tzinfo=None), done["rows_assigned"],
                     ", ".join(table for table, clause in done["ttl"].items() if clause)]]
        else:
            done = clear_retention(client, database, args.project)
            columns = ["project", "was_raw_days", "cleared_at"]
            rows = [[done["project"], done["raw_days"], done["cleared_at"].replace(tzinfo=None)]]  # UTC, as show
    finally:
        client.close()
    print(render(columns, rows, args.format))
    return 0


COMMANDS = {"retention": cmd_retention}
