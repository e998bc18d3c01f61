"""Screenshot-like PNG previews of the ClickHouse dashboards, for the README: `runstream dashboards preview`.

Each panel's SQL is expanded the way Grafana and grafana-clickhouse-datasource expand it (macros and
dashboard variables, all values selected), run against ClickHouse, and drawn with matplotlib in the
panel's grid position. This module also owns the demo data set the previews and tests/test_dashboards.py
run on, and that expansion, so the previews show exactly what the tests check.

The Pipeline dashboard reads the consumer's Prometheus metrics, not ClickHouse: it is not previewable.
"""

# ruff: noqa: S608 - SQL comes from the dashboards' own templates; database names are checked identifiers

from __future__ import annotations

import datetime as dt
import math
import re
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runstream.dashboards import build

INTERVAL_S = 60  # what $__timeInterval buckets by (Grafana derives it from the panel width)
NOT_PREVIEWABLE = {"runstream-pipeline": "reads the consumer's Prometheus metrics, not ClickHouse"}
TABLE_ROWS = 10
GRID_ROW_INCHES = 0.42  # one Grafana grid row (30 px) at the preview's scale
WIDTH_INCHES = 16.0
DPI = 72

_BG, _PANEL, _TEXT, _MUTED, _GRID = "#111217", "#181b1f", "#ccccdc", "#8e8e8e", "#2c3235"
_COLOURS = ("#73bf69", "#f2cc0c", "#8ab8ff", "#ff780a", "#f2495c", "#5794f2", "#b877d9", "#705da0", "#37872d",
            "#fade2a")


def expand(sql: str, db: str, variables: dict[str, list[str]], start: dt.datetime, end: dt.datetime) -> str:
    """What Grafana and grafana-clickhouse-datasource send for this panel."""
    frm, to = int(start.timestamp()), int(end.timestamp())
    sql = sql.replace("${database}", db)
    sql = re.sub(r"\$__timeFilter\(([^)]+)\)",
                 lambda m: f"{m[1]} >= toDateTime({frm}) AND {m[1]} <= toDateTime({to})", sql)
    sql = re.sub(r"\$__timeInterval\(([^)]+)\)",
                 lambda m: f"toStartOfInterval(toDateTime({m[1]}), INTERVAL {INTERVAL_S} second)", sql)
    for name, values in variables.items():
        quoted = ",".join("'" + v.replace("\\", "\\\\").replace("'", "\\'") + "'" for v in values)
        sql = sql.replace(f"${{{name}:singlequote}}", quoted).replace(f"${{{name}}}", values[0] if values else "")
    if "$" in sql:
        raise ValueError(f"unexpanded macro or variable in: {sql[:300]}")
    return sql


def variable_values(client: Any, db: str, variables: Sequence[build.Variable], start: dt.datetime,
                    end: dt.datetime) -> dict[str, list[str]]:
    """Run each variable's query in order, as Grafana does, and select all of its values (the first if single)."""
    values: dict[str, list[str]] = {}
    for variable in variables:
        result = client.query(expand(variable.sql, db, values, start, end))
        column = result.column_names.index("__value") if "__value" in result.column_names else 0
        values[variable.name] = [str(row[column]) for row in result.result_rows]
        if not variable.multi:
            values[variable.name] = values[variable.name][:1]
    return values


def load_demo(client: Any, db: str, dsn: str, spool: Path) -> None:
    """Demo data for every ClickHouse dashboard: three simulated runs with GPU samples, a churn model's drift
    reference and 30 minutes of drifting production samples with labels, and an H100 price and a budget."""
    import numpy as np

    import runstream
    from runstream.consumer import ClickHouseSink, ingest_spool
    from runstream.consumer.migrations import migrate
    from runstream.demo import fleet, simulate_run
    from runstream.monitoring import cost
    from runstream.producer.run import Run
    from runstream.producer.settings import ProducerSettings

    settings = ProducerSettings(spool=spool, sample_interval_s=0)
    for sim in fleet(3):
        simulate_run(sim, "demo", 120, settings)
    rng = np.random.default_rng(5)
    with Run(project="demo", settings=settings) as run:
        run.log_reference({"x": rng.normal(0, 1, 1000), "country": list(rng.choice(["de", "fr"], 1000))},
                          model="churn", version="1", predictions=list(rng.choice(["stay", "leave"], 1000)),
                          baseline_metrics={"accuracy": 0.9})
    monitor = runstream.monitor("churn", "1", sample_rate=1.0, spool=str(spool))
    now_us = time.time_ns() // 1000
    for i, x in enumerate(rng.normal(0.8, 1, 600)):
        monitor.log({"x": float(x), "country": str(rng.choice(["de", "fr", "it"]))}, prediction="stay",
                    label=str(rng.choice(["stay", "leave"])), time_us=now_us - 1_800_000_000 + i * 3_000_000)
    monitor.close()
    migrate(client, db)
    report = ingest_spool(spool, ClickHouseSink(dsn, client=client, database=db))
    if report.rejected:
        raise RuntimeError(f"demo data: {report.rejected} events rejected while loading {spool}")
    cost.store_price_table(client, db, cost.parse_price_table(
        {"prices": [{"gpu_model": "NVIDIA H100 80GB HBM3", "usd_per_gpu_hour": 2.49}],
         "budgets": [{"project": "demo", "usd_per_month": 1000}]}))


@dataclass(frozen=True)
class PanelResult:
    query: build.Query
    x: int
    y: int
    columns: tuple[str, ...]
    rows: list[tuple[Any, ...]]


def panel_results(client: Any, db: str, uid: str, start: dt.datetime, end: dt.datetime) -> list[PanelResult]:
    """Every panel of dashboard `uid`, in its grid position, with its query's result."""
    _, variables, queries = build.DASHBOARDS[uid]
    values = variable_values(client, db, variables, start, end)
    results = []
    for query, x, y in build._layout(queries, lambda q, x, y: (q, x, y)):
        result = client.query(expand(query.sql, db, values, start, end))
        results.append(PanelResult(query, x, y, tuple(result.column_names), [tuple(r) for r in result.result_rows]))
    return results


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:  # pragma: no cover - depends on the installation
        raise ImportError("dashboard previews need matplotlib: pip install 'runstream[dashboards]'") from error
    return plt


def _is_time(value: Any) -> bool:
    return isinstance(value, dt.datetime | dt.date)


def _number(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and value is not None else math.nan


def _format(value: Any) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:,.4g}" if abs(value) < 1e5 else f"{value:,.0f}"
    if isinstance(value, dt.datetime):
        return value.strftime("%Y-%m-%d %H:%M")
    text = str(value)
    return text if len(text) <= 24 else text[:23] + "…"


def _series(result: PanelResult) -> dict[str, tuple[list[Any], list[float]]]:
    """Long (x, series, value) or wide (x, value, value...) results as named series."""
    cols, rows = result.columns, result.rows
    series: dict[str, tuple[list[Any], list[float]]] = {}
    if len(cols) == 3 and rows and isinstance(rows[0][1], str):
        for x, name, value in rows:
            xs, ys = series.setdefault(str(name), ([], []))
            xs.append(x)
            ys.append(_number(value))
        return series
    for i, name in enumerate(cols[1:], start=1):
        series[name] = ([r[0] for r in rows], [_number(r[i]) for r in rows])
    return series


def _style(ax: Any, title: str) -> None:
    ax.set_facecolor(_PANEL)
    ax.set_title(title, loc="left", color=_TEXT, fontsize=10, fontweight="bold", pad=6)
    ax.tick_params(colors=_MUTED, labelsize=7)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.grid(True, color=_GRID, linewidth=0.5)


def _legend(ax: Any, count: int) -> None:
    if count:
        ax.legend(fontsize=7, loc="upper left", ncol=min(count, 4), labelcolor=_TEXT, facecolor=_PANEL,
                  edgecolor=_PANEL, framealpha=0.85)


def _draw_lines(ax: Any, result: PanelResult) -> None:
    series = _series(result)
    for i, (name, (xs, ys)) in enumerate(series.items()):
        ax.plot(xs, ys, color=_COLOURS[i % len(_COLOURS)], linewidth=1.2, label=name)
    _legend(ax, len(series))


def _draw_bars(ax: Any, result: PanelResult) -> None:
    import numpy as np

    series = _series(result)
    keys = sorted({x for xs, _ in series.values() for x in xs})
    position = {x: i for i, x in enumerate(keys)}
    stacked = len(result.columns) == 3 and isinstance(result.rows[0][1], str) if result.rows else False
    width = 0.8 if stacked else 0.8 / max(len(series), 1)
    bottom = np.zeros(len(keys))
    for i, (name, (xs, ys)) in enumerate(series.items()):
        heights = np.zeros(len(keys))
        for x, y in zip(xs, ys, strict=True):
            heights[position[x]] += 0.0 if math.isnan(y) else y
        where = np.arange(len(keys)) + (0 if stacked else (i - (len(series) - 1) / 2) * width)
        ax.bar(where, heights, width, bottom=bottom if stacked else None, label=name,
               color=_COLOURS[i % len(_COLOURS)])
        if stacked:
            bottom += heights
    step = max(1, len(keys) // 8)
    daily = all(_is_time(k) and k.hour == k.minute == 0 for k in keys)
    ax.set_xticks(range(0, len(keys), step))
    ax.set_xticklabels([k.strftime("%Y-%m-%d" if daily else "%H:%M") if _is_time(k) else _format(k)
                        for k in keys[::step]])
    ax.set_xlim(-0.5, max(len(keys), 3) - 0.5)  # a lone bar stays a bar, not a wall
    ax.set_ylim(bottom=0, top=max(float(bottom.max()) if stacked else 0.0, ax.get_ylim()[1]) or 1.0)
    _legend(ax, len(series))


def _draw_heatmap(ax: Any, fig: Any, result: PanelResult) -> None:
    import matplotlib.dates as mdates
    import numpy as np

    times = sorted({r[0] for r in result.rows})
    names = sorted({str(r[1]) for r in result.rows})
    grid = np.full((len(names), len(times)), np.nan)
    col, row = {t: i for i, t in enumerate(times)}, {n: i for i, n in enumerate(names)}
    for t, name, value in result.rows:
        grid[row[str(name)], col[t]] = _number(value)
    extent = (mdates.date2num(times[0]), mdates.date2num(times[-1]), len(names) - 0.5, -0.5)  # type: ignore[no-untyped-call]
    image = ax.imshow(grid, aspect="auto", cmap="viridis", interpolation="nearest", extent=extent, vmin=0, vmax=100)
    ax.xaxis_date()
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels(names)
    ax.grid(False)
    bar = fig.colorbar(image, ax=ax, pad=0.01, fraction=0.03)
    bar.ax.tick_params(colors=_MUTED, labelsize=7)
    bar.outline.set_visible(False)


def _draw_table(ax: Any, result: PanelResult) -> None:
    ax.axis("off")
    cells = [[_format(v) for v in row] for row in result.rows[:TABLE_ROWS]]
    table = ax.table(cellText=cells or [[""] * len(result.columns)], colLabels=list(result.columns),
                     loc="upper center", cellLoc="left", colLoc="left")
    table.auto_set_font_size(False)
    table.set_fontsize(7.5)
    table.scale(1, 1.25)
    for (r, _c), cell in table.get_celld().items():
        cell.set_edgecolor(_GRID)
        cell.set_facecolor(_BG if r == 0 else _PANEL)
        cell.get_text().set_color(_TEXT if r else "#6e9fff")
    if len(result.rows) > TABLE_ROWS:
        ax.text(1, 0, f"{len(result.rows) - TABLE_ROWS} more rows", transform=ax.transAxes, ha="right",
                color=_MUTED, fontsize=7)


def _draw_stat(ax: Any, result: PanelResult) -> None:
    ax.axis("off")
    value = result.rows[0][-1] if result.rows else None
    ax.text(0.5, 0.45, _format(value) if value is not None else "No data", transform=ax.transAxes, ha="center",
            va="center", color=_COLOURS[0], fontsize=32, fontweight="bold")


def render(title: str, results: Sequence[PanelResult], out: Path) -> Path:
    """Draw one dashboard's panels in their grid positions (24 columns, 8 rows per panel) into a PNG."""
    plt = _pyplot()
    import matplotlib.dates as mdates

    grid_rows = max((r.y + 8 for r in results), default=8)
    header = 0.5
    height = grid_rows * GRID_ROW_INCHES + header
    fig = plt.figure(figsize=(WIDTH_INCHES, height), facecolor=_BG)
    fig.text(0.01, 1 - 0.25 / height, title, color=_TEXT, fontsize=14, fontweight="bold", va="center")
    fig.text(0.99, 1 - 0.25 / height, "preview: demo data, last 24 h", color=_MUTED, fontsize=9, ha="right",
             va="center")
    pad_x, pad_top, pad_bottom = 0.045, 0.45, 0.45  # room for tick labels, in grid units / inches
    for result in results:
        query = result.query
        margin = 1.4 if query.panel == "heatmap" else pad_x * 24 / 2  # heatmaps label their rows on the left
        left = (result.x + margin) / 24
        width = (query.width - margin - pad_x * 24 / 2) / 24
        top_in = header + result.y * GRID_ROW_INCHES + pad_top
        height_in = 8 * GRID_ROW_INCHES - pad_top - pad_bottom
        ax = fig.add_axes((left, 1 - (top_in + height_in) / height, width, height_in / height))
        _style(ax, query.title)
        if not result.rows:
            ax.text(0.5, 0.5, "No data", transform=ax.transAxes, ha="center", color=_MUTED)
        elif query.panel == "table":
            _draw_table(ax, result)
        elif query.panel == "stat":
            _draw_stat(ax, result)
        elif query.panel == "heatmap":
            _draw_heatmap(ax, fig, result)
        elif query.panel == "barchart":
            _draw_bars(ax, result)
        else:
            _draw_lines(ax, result)
        if query.panel in ("timeseries", "heatmap") and result.rows and _is_time(result.rows[0][0]):
            locator = mdates.AutoDateLocator(maxticks=8)  # type: ignore[no-untyped-call]
            ax.xaxis.set_major_locator(locator)
            ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))  # type: ignore[no-untyped-call]
            ax.xaxis.get_offset_text().set_color(_MUTED)
            ax.xaxis.get_offset_text().set_fontsize(7)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=DPI, facecolor=_BG)
    plt.close(fig)
    return out


def previews(client: Any, db: str, out: Path, *, end: dt.datetime | None = None,
             hours: float = 24.0) -> dict[str, list[PanelResult]]:
    """Write `<uid>.png` under `out` for every previewable dashboard; uid -> its panels' results."""
    end = end or dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)
    start = end - dt.timedelta(hours=hours)
    drawn = {}
    for uid, (title, _, _) in build.DASHBOARDS.items():
        results = panel_results(client, db, uid, start, end)
        render(title, results, out / f"{uid}.png")
        drawn[uid] = results
    return drawn


def demo_previews(out: Path) -> dict[str, list[PanelResult]]:
    """Previews on a fresh demo data set in a throw-away embedded ClickHouse (chDB)."""
    from runstream.consumer.dsn import connect

    with tempfile.TemporaryDirectory(prefix="runstream-preview-") as tmp:
        dsn = f"chdb://{tmp}/chdb?database=preview"
        client, db = connect(dsn)
        load_demo(client, db, dsn, Path(tmp) / "spool")
        return previews(client, db, out)
