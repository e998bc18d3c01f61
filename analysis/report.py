"""`runstream report`: one self-contained HTML page about a project that opens offline.

The page carries its data as JSON and a small inline script that draws SVG: metric curves
overlaid per metric (cut into buckets in ClickHouse, each drawn as its last value inside a min-max
band so one-step spikes stay visible, NaN/±Inf points marked: runstream.analysis.curves), parallel coordinates of
params against a metric, the latest histogram of each metric per run (runstream.analysis.histograms),
and GPU-hours and cost per run. No CDN, no fonts, no network: the file
can be mailed or archived and still opens. Data is embedded with '<' escaped, and the script
writes text with textContent only, so run names and params cannot inject markup.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from runstream.analysis.group_curves import project_groups
from runstream.analysis.histograms import latest_histograms
from runstream.analysis.queries import check_mode, check_project, leaderboard, left_out_note, metric_history, runs
from runstream.monitoring.metric_direction import declared_goals

CURVE_POINTS = 500
#: The most histograms the report draws (the latest of each run and metric; `runstream histograms` lists all).
HISTOGRAMS_DRAWN = 48


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def collect(client: Any, db: str, project: str, *, metric: str | None = None, mode: str | None = None,
            price_per_gpu_hour: float = 0.0, points: int = CURVE_POINTS, x: str | None = None,
            step: Callable[[str], None] = lambda _label: None) -> dict[str, Any]:
    """The report's data: runs with params and metrics, downsampled curves, GPU-hours and cost."""
    check_project(client, db, project)
    step("runs")
    table = runs(client, db, project=project)
    records = table.records()
    param_keys = [c[len("params."):] for c in table.columns if c.startswith("params.")]
    metrics = [c[len("metrics."):] for c in table.columns if c.startswith("metrics.")]
    if not records:
        raise ValueError(f"project {project!r}: no runs to report on")
    chosen = metric or (metrics[0] if metrics else None)
    if chosen is not None and chosen not in metrics:
        raise ValueError(f"metric {chosen!r}: no run of project {project!r} logged it "
                         f"(metrics: {', '.join(metrics) or 'none'})")
    run_ids = [r["run_id"] for r in records]
    # per metric and run, per bucket: [x, last_x, min, max, last, count, nan_count, pos_inf_count, neg_inf_count]
    curves: dict[str, dict[str, list[list[Any]]]] = {}
    axes: dict[str, str] = {}
    for name in metrics:
        if name == x:
            continue  # the axis against itself says nothing
        step(f"curve of {name}")
        history = metric_history(client, db, run_ids, [name], points=points, x=x)
        per_run: dict[str, list[list[Any]]] = {}
        for run_id, _metric, axis, *bucket in history.rows:
            axes.setdefault(name, axis)
            per_run.setdefault(run_id, []).append([_x_number(bucket[0]), _x_number(bucket[1]), *bucket[2:]])
        curves[name] = per_run
    step("groups")
    groups = project_groups(client, db, project, points=points)  # mean, min-max band and count per step
    step("histograms")
    histograms = latest_histograms(client, db, run_ids)  # the latest of each (run, metric): Run.log_histogram
    ranking: list[dict[str, Any]] = []
    chosen_mode = None
    left_out = 0
    if chosen is not None:
        step("leaderboard")
        # `mode`, else the declared goal, else the name rule (runstream.monitoring.metric_direction)
        chosen_mode = check_mode(mode, chosen, declared_goals(client, db, [chosen]) if mode is None else None)
        board = leaderboard(client, db, project, chosen, chosen_mode)
        ranking, left_out = board.records(), board.left_out
    return {
        "project": project,
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "metric": chosen,
        "mode": chosen_mode,
        "price_per_gpu_hour": price_per_gpu_hour,
        "params": param_keys,
        "metrics": metrics,
        "runs": [
            {
                "id": r["run_id"], "name": r["name"], "status": r["status"],
                "params": {k: _finite(r[f"params.{k}"]) for k in param_keys},
                "final": {m: _finite(r[f"metrics.{m}"]) for m in metrics},
                "best": {m: _finite(r[f"best.{m}"]) for m in metrics},
                "gpu_hours": r["gpu_hours"] or 0.0,
                "cost": (r["gpu_hours"] or 0.0) * price_per_gpu_hour,
            }
            for r in records
        ],
        "curves": {m: {run_id: [[_finite(v) for v in bucket] for bucket in buckets] for run_id, buckets in c.items()}
                   for m, c in curves.items()},
        "axes": axes,  # per metric: the x-axis its curves are drawn against (step, time, relative, a metric)
        "leaderboard": [{k: _finite(v) for k, v in row.items()} for row in ranking],
        # per group: runs, and per metric [step, mean, min, max, count] (finite values only; None: none finite)
        "groups": groups["groups"],
        "groups_more": groups["more"],
        # per (run, metric) with histograms: the latest one (run, metric, step, rank, edges, counts,
        # non_finite: its NaN/±Inf count, logged: how many the run logged); at most HISTOGRAMS_DRAWN
        "histograms": histograms[:HISTOGRAMS_DRAWN],
        "histograms_more": max(0, len(histograms) - HISTOGRAMS_DRAWN),
        # runs that logged the metric but never a finite value: not ranked (runstream.monitoring.finite_values)
        "left_out": left_out,
        "left_out_note": left_out_note(chosen, left_out) if chosen is not None else "",
    }


def _x_number(value: Any) -> Any:
    """A bucket's x for the page: the time axis as seconds since the epoch, the others as they are."""
    return value.timestamp() if isinstance(value, datetime) else value


def render_html(data: dict[str, Any]) -> str:
    payload = json.dumps(data, allow_nan=False, default=str).replace("<", "\\u003c").replace("&", "\\u0026")
    title = html.escape(f"runstream report: {data['project']}")
    return _PAGE.replace("__TITLE__", title).replace("__DATA__", payload).replace("__SCRIPT__", _SCRIPT)


def write_report(client: Any, db: str, project: str, out: Path, **options: Any) -> Path:
    data = collect(client, db, project, **options)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_html(data), encoding="utf-8")
    return out


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy"
      content="default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:">
<title>__TITLE__</title>
<style>
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #222; }
h1 { font-size: 20px; } h2 { font-size: 16px; margin-top: 28px; }
.plots { display: flex; flex-wrap: wrap; gap: 16px; }
figure { margin: 0; } figcaption { font-weight: 600; margin-bottom: 4px; }
svg text { font: 11px system-ui, sans-serif; fill: #333; }
table { border-collapse: collapse; margin-top: 8px; }
td, th { padding: 3px 8px; border-bottom: 1px solid #ddd; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
#errors { color: #b00; white-space: pre-wrap; }
.note { color: #555; }
</style>
</head>
<body>
<h1 id="title">__TITLE__</h1>
<p class="note" id="summary"></p>
<div id="errors"></div>
<h2>Leaderboard</h2><div id="leaderboard"></div>
<h2>Curves, overlaid per metric</h2><div class="plots" id="curves"></div>
<h2>Groups: mean per step, min-max band</h2><div id="groups"></div>
<h2>Histograms: the latest of each metric per run</h2><div class="plots" id="histograms"></div>
<h2>Parallel coordinates: params against the metric</h2><div id="parallel"></div>
<h2>GPU-hours and cost per run</h2><div id="gpu"></div>
<script type="application/json" id="report-data">__DATA__</script>
<script>
__SCRIPT__
</script>
</body>
</html>
"""

_SCRIPT = r"""
window.addEventListener("error", function (e) {
  document.getElementById("errors").textContent += "report script error: " + e.message + "\n";
});
(function () {
  "use strict";
  var NS = "http://www.w3.org/2000/svg";
  var PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                 "#bcbd22", "#17becf"];
  function el(name, attrs, parent) {
    var node = document.createElementNS(NS, name);
    for (var k in attrs) { node.setAttribute(k, attrs[k]); }
    if (parent) { parent.appendChild(node); }
    return node;
  }
  function text(parent, x, y, content, anchor) {
    var t = el("text", {x: x, y: y, "text-anchor": anchor || "start"}, parent);
    t.textContent = content;
    return t;
  }
  function fmt(v) {
    if (v === null || v === undefined) { return "\u2014"; }
    if (typeof v !== "number") { return String(v); }
    if (v !== 0 && (Math.abs(v) < 1e-3 || Math.abs(v) >= 1e6)) { return v.toExponential(2); }
    return String(Math.round(v * 1e4) / 1e4);
  }
  function extent(values) {
    var lo = Infinity, hi = -Infinity;
    values.forEach(function (v) {
      if (typeof v === "number" && isFinite(v)) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
    });
    if (lo === Infinity) { return [0, 1]; }
    if (lo === hi) { return [lo - 0.5, hi + 0.5]; }
    return [lo, hi];
  }
  function scale(d, r) { return function (v) { return r[0] + (v - d[0]) / (d[1] - d[0]) * (r[1] - r[0]); }; }
  // Both axes of a chart over steps, with five ticks each: box is the chart's size and margins.
  function stepAxes(svg, box, ex, ey, x, y, label) {
    el("line", {x1: box.L, y1: box.H - box.B, x2: box.W - box.R, y2: box.H - box.B, stroke: "#999"}, svg);
    el("line", {x1: box.L, y1: box.T, x2: box.L, y2: box.H - box.B, stroke: "#999"}, svg);
    for (var i = 0; i <= 4; i++) {
      var vx = ex[0] + (ex[1] - ex[0]) * i / 4, vy = ey[0] + (ey[1] - ey[0]) * i / 4;
      text(svg, x(vx), box.H - box.B + 14, label === "time" ? new Date(vx * 1000).toISOString().slice(5, 16)
           : fmt(label && label !== "step" ? vx : Math.round(vx)), "middle");
      text(svg, box.L - 4, y(vy) + 4, fmt(vy), "end");
    }
    text(svg, (box.L + box.W - box.R) / 2, box.H - 4, label === "relative" ? "seconds since the run's first point"
         : label || "step", "middle");
  }
  function svgRoot(parent, w, h, label) {
    var svg = el("svg", {width: w, height: h, viewBox: "0 0 " + w + " " + h, role: "img", "aria-label": label}, parent);
    return svg;
  }
  var data = JSON.parse(document.getElementById("report-data").textContent);
  var color = {};
  data.runs.forEach(function (r, i) { color[r.id] = PALETTE[i % PALETTE.length]; });
  var names = {};
  data.runs.forEach(function (r) { names[r.id] = r.name; });

  document.getElementById("summary").textContent = data.runs.length + " runs of project " + data.project +
    ", generated " + data.generated_at + (data.metric ? "; ranked by " + data.metric + " (" + data.mode + ")" : "");

  function table(parent, headers, rows, numeric) {
    var t = document.createElement("table");
    var tr = document.createElement("tr");
    headers.forEach(function (h) { var th = document.createElement("th"); th.textContent = h; tr.appendChild(th); });
    t.appendChild(tr);
    rows.forEach(function (row) {
      var r = document.createElement("tr");
      row.forEach(function (v, i) {
        var td = document.createElement("td"); td.textContent = fmt(v);
        if (numeric[i]) { td.className = "num"; }
        r.appendChild(td);
      });
      t.appendChild(r);
    });
    parent.appendChild(t);
  }

  if (data.leaderboard.length) {
    var lbKeys = Object.keys(data.leaderboard[0]);
    table(document.getElementById("leaderboard"), lbKeys,
          data.leaderboard.map(function (row) { return lbKeys.map(function (k) { return row[k]; }); }),
          lbKeys.map(function (k) { return typeof data.leaderboard[0][k] === "number"; }));
  }
  if (data.left_out_note) {
    var leftOut = document.createElement("p");
    leftOut.className = "note"; leftOut.id = "left-out"; leftOut.textContent = data.left_out_note;
    document.getElementById("leaderboard").appendChild(leftOut);
  }

  // Each bucket [x, last_x, min, max, last, count, nan, +inf, -inf]: the finite min-max range as a band (a one-step
  // spike is its bucket's min or max, so it shows at any bucket width), the last values as the line, and a
  // marker under (NaN, -Inf) or over (+Inf) a bucket that held non-finite points, titled with their counts.
  function lineChart(parent, metric, curves, axis) {
    var W = 460, H = 300, L = 56, R = 12, T = 12, B = 36;
    var fig = document.createElement("figure");
    var cap = document.createElement("figcaption"); cap.textContent = metric; fig.appendChild(cap);
    parent.appendChild(fig);
    var svg = svgRoot(fig, W, H, "curves of " + metric);
    svg.setAttribute("class", "curve-plot");
    var xs = [], ys = [];
    Object.keys(curves).forEach(function (id) {
      curves[id].forEach(function (b) { xs.push(b[0], b[1]); ys.push(b[2], b[3], b[4]); });
    });
    var x = scale(extent(xs), [L, W - R]), y = scale(extent(ys), [H - B, T]);
    var ex = extent(xs), ey = extent(ys);
    stepAxes(svg, {W: W, H: H, L: L, R: R, T: T, B: B}, ex, ey, x, y, axis);
    Object.keys(curves).forEach(function (id) {
      var banded = curves[id].filter(function (b) { return b[2] !== null; });
      if (banded.length) {
        var at = function (vx, vy) { return x(vx).toFixed(1) + "," + y(vy).toFixed(1); };
        var top = banded.map(function (b) { return at(b[0], b[3]) + " " + at(b[1], b[3]); });
        var bottom = banded.slice().reverse().map(function (b) { return at(b[1], b[2]) + " " + at(b[0], b[2]); });
        el("polygon", {points: top.concat(bottom).join(" "), fill: color[id], "fill-opacity": 0.25,
                       stroke: color[id], "stroke-opacity": 0.5, "stroke-width": 0.5, "class": "curve-band",
                       "data-run": id}, svg);
      }
      curves[id].forEach(function (b) {
        if (!(b[6] || b[7] || b[8])) { return; }
        var mark = el("circle", {cx: x(b[0]).toFixed(1), cy: b[7] && !(b[6] || b[8]) ? T + 3 : H - B - 3, r: 3,
                                 fill: "none", stroke: color[id], "class": "non-finite", "data-run": id}, svg);
        var tip = el("title", {}, mark);
        tip.textContent = (names[id] || id) + ": " + [[b[6], "NaN"], [b[7], "+Inf"], [b[8], "-Inf"]]
          .filter(function (c) { return c[0]; }).map(function (c) { return c[0] + " " + c[1]; }).join(", ");
      });
      var pts = curves[id].filter(function (b) { return b[4] !== null; })
        .map(function (b) { return x(b[1]).toFixed(1) + "," + y(b[4]).toFixed(1); });
      if (!pts.length) { return; }
      var line = el("polyline", {points: pts.join(" "), fill: "none", stroke: color[id], "stroke-width": 1.5,
                                 "data-run": id}, svg);
      var tip = el("title", {}, line); tip.textContent = names[id] || id;
    });
  }
  var curvesDiv = document.getElementById("curves");
  data.metrics.forEach(function (m) { if (data.curves[m]) { lineChart(curvesDiv, m, data.curves[m], data.axes[m]); } });
  var legend = document.createElement("p");
  data.runs.forEach(function (r) {
    var s = document.createElement("span"); s.style.color = color[r.id]; s.textContent = "\u25A0 " + r.name + "  ";
    legend.appendChild(s);
  });
  curvesDiv.parentNode.insertBefore(legend, curvesDiv.nextSibling);

  function bandChart(parent, title, rows) {
    var W = 460, H = 260, L = 56, R = 12, T = 12, B = 36;
    var fig = document.createElement("figure");
    var cap = document.createElement("figcaption"); cap.textContent = title; fig.appendChild(cap);
    parent.appendChild(fig);
    var svg = svgRoot(fig, W, H, "group curve of " + title);
    svg.setAttribute("class", "group-plot");
    var pts = rows.filter(function (r) { return r[1] !== null; });
    var ex = extent(pts.map(function (r) { return r[0]; }));
    var ey = extent(pts.map(function (r) { return r[2]; }).concat(pts.map(function (r) { return r[3]; })));
    var x = scale(ex, [L, W - R]), y = scale(ey, [H - B, T]);
    stepAxes(svg, {W: W, H: H, L: L, R: R, T: T, B: B}, ex, ey, x, y);
    if (!pts.length) { return; }
    var upper = pts.map(function (r) { return x(r[0]).toFixed(1) + "," + y(r[3]).toFixed(1); });
    var lower = pts.slice().reverse().map(function (r) { return x(r[0]).toFixed(1) + "," + y(r[2]).toFixed(1); });
    el("polygon", {points: upper.concat(lower).join(" "), fill: PALETTE[0], opacity: 0.25, "class": "band"}, svg);
    el("polyline", {points: pts.map(function (r) { return x(r[0]).toFixed(1) + "," + y(r[1]).toFixed(1); }).join(" "),
                    fill: "none", stroke: PALETTE[0], "stroke-width": 1.5, "class": "mean"}, svg);
  }
  function groups(parent) {
    if (!data.groups.length) { parent.textContent = "no run of this project has a group (init(group=...))"; return; }
    var rows = [];
    data.groups.forEach(function (g) {
      Object.keys(g.curves).sort().forEach(function (m) {
        var last = g.curves[m][g.curves[m].length - 1];
        rows.push([g.group, g.runs, m, last[0], last[1], last[2], last[3], last[4]]);
      });
    });
    table(parent, ["group", "runs", "metric", "last step", "mean", "min", "max", "runs at last step"], rows,
          [false, true, false, true, true, true, true, true]);
    var plots = document.createElement("div"); plots.className = "plots"; parent.appendChild(plots);
    data.groups.forEach(function (g) {
      Object.keys(g.curves).sort().forEach(function (m) { bandChart(plots, g.group + " \u00b7 " + m, g.curves[m]); });
    });
    if (data.groups_more) {
      var more = document.createElement("p"); more.className = "note";
      more.textContent = data.groups_more + " more groups not drawn (runstream curve --group G shows any group)";
      parent.appendChild(more);
    }
  }
  groups(document.getElementById("groups"));

  function parallel(parent) {
    if (!data.metric) { parent.textContent = "no metric logged"; return; }
    var dims = data.params.map(function (k) { return {key: k, label: k, get: function (r) { return r.params[k]; }}; });
    dims.push({key: "metric", label: data.metric + " (best)", get: function (r) { return r.best[data.metric]; }});
    var W = Math.max(480, 130 * dims.length), H = 320, T = 28, B = 28, L = 60, R = 60;
    var svg = svgRoot(parent, W, H, "parallel coordinates");
    svg.setAttribute("class", "parallel-plot");
    var xpos = scale([0, Math.max(1, dims.length - 1)], [L, W - R]);
    dims.forEach(function (d) {
      var vals = data.runs.map(d.get).filter(function (v) { return v !== null && v !== undefined; });
      var numeric = vals.length && vals.every(function (v) { return typeof v === "number"; });
      if (numeric) {
        var e = extent(vals), log = e[0] > 0 && e[1] / e[0] >= 10;
        var lo = Math.min.apply(null, vals), hi = Math.max.apply(null, vals);
        var f = log ? Math.log10 : function (v) { return v; };
        var s = scale(log ? [Math.log10(e[0]), Math.log10(e[1])] : e, [H - B, T]);
        d.pos = function (v) { return typeof v === "number" ? s(f(v)) : null; };
        d.ticks = lo === hi ? [lo] : [lo, hi];
      } else {
        var cats = Array.from(new Set(vals.map(String))).sort();
        var c = scale([-0.5, cats.length - 0.5], [H - B, T]);
        d.pos = function (v) { return v === null || v === undefined ? null : c(cats.indexOf(String(v))); };
        d.ticks = cats;
      }
    });
    var metricVals = data.runs.map(dims[dims.length - 1].get);
    var me = extent(metricVals);
    data.runs.forEach(function (r) {
      var mv = dims[dims.length - 1].get(r);
      if (mv === null || mv === undefined) { return; }
      var t = (mv - me[0]) / (me[1] - me[0]);
      if (data.mode === "min") { t = 1 - t; }
      var stroke = "rgb(" + Math.round(40 + 200 * t) + ",60," + Math.round(240 - 200 * t) + ")";
      var pts = [];
      dims.forEach(function (d, i) {
        var p = d.pos(d.get(r));
        if (p !== null) { pts.push(xpos(i).toFixed(1) + "," + p.toFixed(1)); }
      });
      var line = el("polyline", {points: pts.join(" "), fill: "none", stroke: stroke, "stroke-width": 2,
                                 opacity: 0.8, "data-run": r.id}, svg);
      var tip = el("title", {}, line); tip.textContent = r.name + ": " + fmt(mv);
    });
    dims.forEach(function (d, i) {
      el("line", {x1: xpos(i), y1: T, x2: xpos(i), y2: H - B, stroke: "#444"}, svg);
      text(svg, xpos(i), T - 10, d.label, "middle");
      d.ticks.forEach(function (v) { var p = d.pos(v); if (p !== null) { text(svg, xpos(i) + 4, p + 4, fmt(v)); } });
    });
  }
  parallel(document.getElementById("parallel"));

  function gpu(parent) {
    var runs = data.runs.slice();
    var W = 640, row = 22, L = 200, H = row * runs.length + 30;
    var svg = svgRoot(parent, W, H, "GPU-hours per run");
    svg.setAttribute("class", "gpu-plot");
    var max = Math.max.apply(null, runs.map(function (r) { return r.gpu_hours; }).concat([1e-9]));
    var x = scale([0, max], [L, W - 150]);
    runs.forEach(function (r, i) {
      var yy = 10 + i * row;
      text(svg, L - 6, yy + 14, r.name, "end");
      el("rect", {x: L, y: yy + 3, width: Math.max(1, x(r.gpu_hours) - L), height: row - 6, fill: color[r.id],
                  "data-run": r.id}, svg);
      text(svg, x(r.gpu_hours) + 6, yy + 14, fmt(r.gpu_hours) + " GPU-h" +
           (data.price_per_gpu_hour ? ", $" + r.cost.toFixed(2) : ""));
    });
    table(parent, ["run", "status", "GPU-hours", "cost ($" + fmt(data.price_per_gpu_hour) + "/GPU-hour)"],
          runs.map(function (r) { return [r.name, r.status, r.gpu_hours, r.cost]; }), [false, false, true, true]);
  }
  gpu(document.getElementById("gpu"));
  function histogramChart(parent, h) {
    var W = 300, H = 170, L = 44, R = 10, T = 10, B = 30;
    var fig = document.createElement("figure");
    var cap = document.createElement("figcaption");
    cap.textContent = (names[h.run_id] || h.run_id) + " \u00b7 " + h.metric + " at step " + h.step +
      (h.rank ? " (rank " + h.rank + ")" : "");
    fig.appendChild(cap); parent.appendChild(fig);
    var svg = svgRoot(fig, W, H, "histogram of " + h.metric);
    svg.setAttribute("class", "histogram-plot"); svg.setAttribute("data-run", h.run_id);
    var edges = h.edges, counts = h.counts, top = Math.max.apply(null, counts.concat([1]));
    var x = scale([edges[0], edges[edges.length - 1]], [L, W - R]), y = scale([0, top], [H - B, T]);
    counts.forEach(function (c, i) {
      if (c <= 0) { return; }
      var bar = el("rect", {x: x(edges[i]).toFixed(2), y: y(c).toFixed(2), height: (H - B - y(c)).toFixed(2),
                            width: Math.max(0.5, x(edges[i + 1]) - x(edges[i])).toFixed(2), fill: color[h.run_id],
                            "data-count": c}, svg);
      var tip = el("title", {}, bar); tip.textContent = "[" + fmt(edges[i]) + ", " + fmt(edges[i + 1]) + "): " + c;
    });
    el("line", {x1: L, y1: H - B, x2: W - R, y2: H - B, stroke: "#999"}, svg);
    text(svg, L, H - B + 14, fmt(edges[0]), "start");
    text(svg, W - R, H - B + 14, fmt(edges[edges.length - 1]), "end");
    text(svg, L - 4, T + 8, fmt(top), "end");
    text(svg, L - 4, H - B, "0", "end");
    if (h.non_finite) { text(svg, W - R, T + 8, "+ " + h.non_finite + " NaN/\u00b1Inf", "end"); }
    text(svg, (L + W - R) / 2, H - 4, h.logged + " logged", "middle");
  }
  (function (parent) {
    if (!data.histograms.length) {
      parent.textContent = "no run of this project logged a histogram (run.log_histogram)"; return;
    }
    data.histograms.forEach(function (h) { histogramChart(parent, h); });
    if (data.histograms_more) {
      var more = document.createElement("p"); more.className = "note";
      more.textContent = data.histograms_more + " more not drawn (runstream histograms RUN lists every one)";
      parent.parentNode.insertBefore(more, parent.nextSibling);
    }
  })(document.getElementById("histograms"));
  document.body.setAttribute("data-rendered", "yes");
})();
"""
