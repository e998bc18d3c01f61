"""Forks: a run's effective curve through its fork chain (`run_curve`) and its family tree (`lineage`).

A fork (`init(fork_from=PARENT, fork_step=N)`) stores only its own points. Its curve is the parent's
points up to step N and its own after N, the parent's in turn being its own parent's up to the
parent's fork step, and so on: the curve is read from `metric_points FINAL` through the chain, no
point is copied. ClickHouse has no recursive CTE, so the chain is resolved first (one keyed lookup of
`runs FINAL` per ancestor, at most MAX_DEPTH, a cycle stops the walk), then the curve is ONE query:
a UNION ALL with one step range per run of the chain, each reading its run's part of the primary key.

For a chain c0 (the run asked), c1 (its parent), ... ck (the root), where c(i) forked from c(i+1) at
step f(i): c0 contributes its steps > f0; c(i) its steps in (f(i), min(f0..f(i-1))]; the root its
steps <= min(f0..f(k-1)). A fork's own points at or before its fork step are not part of its curve
(the parent's are); a fork taken before its parent's own fork step reads straight through to the
grandparent. The consumer refuses a fork whose parent is unknown or never logged the fork step
(runstream.consumer.fork_checks), so every fork in the store starts at a logged point.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

#: The deepest fork chain (and descendant tree) followed: a fork of a fork of ... 32 runs deep.
MAX_DEPTH = 32

#: lineage() row columns (csv/json, and `Client.lineage`).
LINEAGE_COLUMNS = ["run_id", "name", "fork_from", "fork_step", "status", "depth", "relation"]


@dataclass(frozen=True)
class Link:
    """One run of a fork chain: its id and where it forked from (None, None for a root)."""

    run_id: str
    fork_from: str | None
    fork_step: int | None


@dataclass(frozen=True)
class Node:
    """A run of the tree `lineage` returns; `depth` counts from the root (0)."""

    run_id: str
    name: str
    fork_from: str | None
    fork_step: int | None
    status: str
    depth: int
    relation: str  # ancestor | self | descendant

    def row(self) -> list[Any]:
        return [self.run_id, self.name, self.fork_from, self.fork_step, self.status, self.depth, self.relation]


class ForkChainTooDeep(ValueError):
    """A fork chain longer than MAX_DEPTH: its curve would be cut short, so none is given."""


def _fork_of(client: Any, database: str, run_id: str) -> Link | None:
    """The run's fork link from `runs FINAL` (None for a run without a run_started row)."""
    rows = client.query(
        f"SELECT fork_from, fork_step FROM {database}.runs FINAL WHERE run_id = {{run:String}}",  # noqa: S608
        parameters={"run": run_id}).result_rows
    if not rows:
        return None
    parent, step = rows[0]
    if parent is None or step is None:
        return Link(run_id, None, None)
    return Link(run_id, str(parent), int(step))


def ancestry(client: Any, database: str, run_id: str) -> tuple[list[Link], bool]:
    """The chain [run, parent, grandparent, ...] up to its root, and whether it was cut at MAX_DEPTH.

    A parent that has no run_started row ends the chain as a root (its points still count); a run
    met twice (a cycle: only a forged event can make one) ends it where it repeats."""
    chain: list[Link] = []
    seen: set[str] = set()
    current: str | None = run_id
    while current is not None and current not in seen:
        if len(chain) == MAX_DEPTH:
            return chain, True
        seen.add(current)
        link = _fork_of(client, database, current) or Link(current, None, None)
        if link.fork_from in seen:  # a cycle: this run is where the walk stops, as a root
            link = Link(link.run_id, None, None)
        chain.append(link)
        current = link.fork_from
    return chain, False


def _segments(chain: Sequence[Link]) -> list[tuple[str, int | None, int | None]]:
    """(run_id, lowest step excluded, highest step included) per run of the chain; None = unbounded."""
    segments: list[tuple[str, int | None, int | None]] = []
    upper: int | None = None
    for link in chain:
        lower = link.fork_step  # None for the root
        if upper is None or lower is None or lower < upper:
            segments.append((link.run_id, lower, upper))
        if link.fork_step is not None:
            upper = link.fork_step if upper is None else min(upper, link.fork_step)
    return segments


def curve_sql(database: str, chain: Sequence[Link], metrics: Sequence[str] | None
              ) -> tuple[str, dict[str, Any]]:
    """The UNION ALL query of a chain's curve and its bound parameters (only the checked database
    name is pasted in)."""
    parts: list[str] = []
    parameters: dict[str, Any] = {}
    for number, (run, lower, upper) in enumerate(_segments(chain)):
        conditions = [f"run_id = {{run{number}:String}}"]
        parameters[f"run{number}"] = run
        if lower is not None:
            conditions.append(f"step > {{lower{number}:Int64}}")
            parameters[f"lower{number}"] = lower
        if upper is not None:
            conditions.append(f"step <= {{upper{number}:Int64}}")
            parameters[f"upper{number}"] = upper
        if metrics is not None:
            conditions.append("metric IN {metrics:Array(String)}")
        parts.append(f"SELECT toString(metric) AS metric, step, value, {{run{number}:String}} AS source_run_id "  # noqa: S608
                     f"FROM {database}.metric_points FINAL WHERE {' AND '.join(conditions)}")
    if metrics is not None:
        parameters["metrics"] = list(metrics)
    union = " UNION ALL ".join(parts)
    sql = f"SELECT metric, step, value, source_run_id FROM ({union}) ORDER BY metric, step"  # noqa: S608
    return sql, parameters


def run_curve(client: Any, database: str, run_id: str, metrics: Sequence[str] | None = None
              ) -> list[tuple[str, int, float, str]]:
    """A run's effective curve: (metric, step, value, source_run_id), ordered by metric and step.

    For a fork: the parent's (recursively) up to the fork step, then its own; for any other run, its
    own points (FINAL: a step logged again by a later attempt has the later value). `metrics`: only
    these (None: all). Raises ForkChainTooDeep past MAX_DEPTH forks rather than cut the curve."""
    if isinstance(metrics, str):
        raise ValueError(f"metrics: expected a list of metric names, got the string {metrics!r}")
    chain, cut = ancestry(client, database, run_id)
    if cut:
        raise ForkChainTooDeep(f"run {run_id!r}: its fork chain is longer than {MAX_DEPTH} runs "
                               f"(runstream.analysis.lineage.MAX_DEPTH); its curve would be cut short")
    sql, parameters = curve_sql(database, chain, metrics)
    rows = client.query(sql, parameters=parameters).result_rows
    # String, Int64, Float64, String come back as str, int, float, str: no per-value conversion.
    return cast("list[tuple[str, int, float, str]]", [tuple(row) for row in rows])


def _children(client: Any, database: str, parents: list[str]) -> list[Link]:
    rows = client.query(
        f"SELECT run_id, fork_from, fork_step FROM {database}.runs FINAL "  # noqa: S608
        "WHERE fork_from IS NOT NULL AND has({parents:Array(String)}, assumeNotNull(fork_from)) "
        "ORDER BY started_at, run_id", parameters={"parents": parents}).result_rows
    return [Link(str(run), str(parent), int(step)) for run, parent, step in rows]


def _names_and_status(client: Any, database: str, run_ids: list[str], now: dt.datetime | None
                      ) -> dict[str, tuple[str, str]]:
    """Name and status (the one every command shows: runstream.monitoring.run_status) of each run."""
    from runstream.monitoring.run_status import run_status_sql, status_parameters

    source = run_status_sql(database, where="has({ids:Array(String)}, run_id)")
    rows = client.query(f"SELECT run_id, run_name, status FROM ({source})",  # noqa: S608
                        parameters={"ids": run_ids, **status_parameters(now)}).result_rows
    return {str(run): (str(name), str(status)) for run, name, status in rows}


def lineage(client: Any, database: str, run_id: str, *, now: dt.datetime | None = None) -> list[Node]:
    """The run's family tree: its ancestors up to the root, the run, and all its descendants (forks of
    it, forks of those ...), in depth-first order as the tree prints, each with its fork step, name and
    status (as of `now`, default the current time: running, stalled, lost, ok, failed, killed). At most
    MAX_DEPTH ancestors and MAX_DEPTH levels of descendants; a run reached twice is shown once. A run
    unknown to the store raises ValueError naming it."""
    if _fork_of(client, database, run_id) is None:
        raise ValueError(f"run {run_id!r}: no run has this id (no run_started stored for it)")
    chain, _cut = ancestry(client, database, run_id)
    ancestors = list(reversed(chain[1:]))
    seen = {link.run_id for link in chain}
    children: dict[str, list[Link]] = {}
    frontier = [run_id]
    for _level in range(MAX_DEPTH):
        found = [link for link in _children(client, database, frontier) if link.run_id not in seen]
        if not found:
            break
        for link in found:
            seen.add(link.run_id)
            assert link.fork_from is not None
            children.setdefault(link.fork_from, []).append(link)
        frontier = [link.run_id for link in found]
    info = _names_and_status(client, database, sorted(seen), now)
    nodes: list[Node] = []

    def node(link: Link, depth: int, relation: str) -> Node:
        name, status = info.get(link.run_id, ("", "unknown"))
        return Node(link.run_id, name, link.fork_from, link.fork_step, status, depth, relation)

    for depth, link in enumerate(ancestors):
        nodes.append(node(link, depth, "ancestor"))

    def descend(link: Link, depth: int, relation: str) -> None:
        nodes.append(node(link, depth, relation))
        for child in children.get(link.run_id, []):
            descend(child, depth + 1, "descendant")

    descend(chain[0], len(ancestors), "self")
    return nodes


def render_tree(nodes: Sequence[Node]) -> str:
    """The tree as indented text: one line per run (name, id, fork step, status), the asked run marked."""
    lines = []
    # Which depths still have a later sibling below: those draw a vertical bar.
    for index, item in enumerate(nodes):
        prefix = ""
        for depth in range(1, item.depth + 1):
            later = _has_later_sibling(nodes, index, depth)
            if depth == item.depth:
                prefix += "├─ " if later else "└─ "
            else:
                prefix += "│  " if later else "   "
        # the parent is the line above; a top line with a parent (a chain cut at MAX_DEPTH) names it
        parent = f" from {item.fork_from}" if item.depth == 0 else ""
        fork = f"  forked{parent} at step {item.fork_step}" if item.fork_from is not None else ""
        mark = "  <- this run" if item.relation == "self" else ""
        name = item.name or "(no name)"
        lines.append(f"{prefix}{name}  {item.run_id}  [{item.status}]{fork}{mark}")
    return "\n".join(lines)


def _has_later_sibling(nodes: Sequence[Node], index: int, depth: int) -> bool:
    """Whether a node at `depth` follows the ancestor (at `depth`) of nodes[index] before the tree
    climbs above `depth`: that decides between a bar and a blank in the indentation."""
    for later in nodes[index + 1:]:
        if later.depth < depth:
            return False
        if later.depth == depth:
            return True
    return False
