"""How responsive the web UI is with 1,000 runs and 10 curves of 100,000 steps, driven through a real browser.

    .venv/bin/python bench/ui_responsiveness.py                  # 1,000 runs; 10 of them with 100,000 steps
    .venv/bin/python bench/ui_responsiveness.py --repeat 5 --steps 200000

The project is generated straight into a fresh embedded folder (INSERT ... SELECT FROM numbers(): the
generator of bench/analysis_queries.py, 1,000 runs x 100 steps x 2 metrics), then the first 10 runs are
extended to --steps steps of loss and acc, with one spike each (so the min/max band has something to
keep); every run's summary is computed once, as the consumer would have. That happens in a child process:
the embedded engine admits one process per folder, and the folder then belongs to `runstream server
--no-spool`, started as a user starts it. Debian's chromium (never a downloaded browser), driven by
Playwright, opens the UI with the 10 long runs selected (`/#runs=...&metric=loss`) and the figures are read
from the page's own clock (performance.now(), 0 = navigation start):

- time to first chart: navigation start -> the 10 curves drawn (page, plotly.js, /api/runs, /api/metrics,
  /api/curves with 1,000 buckets per curve, plotly's draw), in a fresh browser context (no HTTP cache); with
  plotly's WebGL lines (scattergl, the default: software WebGL in headless chromium, a GPU's is faster) and
  with its SVG lines (`#renderer=svg`); and after a reload (plotly.js, 4.8 MB, cached: most of a first
  visit's time is parsing it);
- runs table: navigation start -> the 1,000-row table in the DOM, and the time building it took;
- redraw after zoom: Plotly.relayout to an x range -> the range asked again from the server (x_min/x_max)
  and drawn; a wide range (bucketed again) and a narrow one (every point);
- the /api/curves answer alone, timed from Python, to split server time from the browser's.

Medians of --repeat repetitions are printed as a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
READY = re.compile(r"^runstream server: (?P<url>https?://\S+)")
LONG_RUNS = 10
DATABASE = "ui_bench"

# In the child process: 1,000 short runs by analysis_queries' generator, the first LONG_RUNS extended to `steps`.
_GENERATE = """
import sys, time
sys.path.insert(0, sys.argv[1])
from analysis_queries import _VALUES, generate
from runstream.consumer import connect
from runstream.consumer.migrations import migrate
from runstream.consumer.run_summary import refresh_all
dsn, runs, long_runs, steps = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
client, db = connect(dsn, create_database=True)
migrate(client, db)
start = time.monotonic()
generate(client, db, runs, 100, 2, runs)
for metric in ("acc", "loss"):
    value = _VALUES[metric].format(steps=steps)
    spike = "if(step = 37 * (r + 1) * 100 % {steps}, 10 * value, value)".replace("{steps}", str(steps))
    client.command(
        f"INSERT INTO {db}.metric_points (run_id, metric, step, value, time) "
        f"SELECT concat('run-', leftPad(toString(r), 6, '0')), '{metric}', step, "
        f"{spike if metric == 'loss' else 'value'}, "
        f"toDateTime64('2025-01-01 00:00:00', 6, 'UTC') + toIntervalMillisecond(step * 100) "
        f"FROM (SELECT r, step, {value} AS value FROM (SELECT intDiv(number, {steps - 100}) AS r, "
        f"toInt64(100 + number % {steps - 100}) AS step FROM numbers({long_runs * (steps - 100)})))",
        settings={"max_insert_threads": 2, "max_threads": 2})
client.command(f"OPTIMIZE TABLE {db}.metric_summary_states FINAL")
refresh_all(client, db)
points = client.query(f"SELECT count() FROM {db}.metric_points").result_rows[0][0]
print(f"generated {runs:,} runs, {points:,} points in {time.monotonic() - start:.0f} s", file=sys.stderr)
"""


def generate(folder: Path, runs: int, steps: int) -> str:
    dsn = f"chdb://{folder}?database={DATABASE}"
    subprocess.run([sys.executable, "-c", _GENERATE, str(Path(__file__).parent), dsn, str(runs), str(LONG_RUNS),
                    str(steps)], check=True, timeout=1800)
    return dsn


@contextmanager
def server(dsn: str, timeout_s: float = 120.0) -> Iterator[str]:
    """`runstream server --no-spool --port 0` on the folder until the block ends; its URL."""
    process = subprocess.Popen([sys.executable, "-m", "runstream.cli", "server", "--clickhouse", dsn, "--no-spool",
                                "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    found: list[str] = []
    output: list[str] = []
    ready = threading.Event()

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            output.append(line)
            match = READY.match(line)
            if match and not found:
                found.append(match["url"])
                ready.set()
        ready.set()

    threading.Thread(target=pump, daemon=True).start()
    try:
        if not ready.wait(timeout_s) or not found:
            raise SystemExit(f"runstream server did not start:\n{''.join(output)}")
        yield found[0]
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()


def api_seconds(url: str, params: list[tuple[str, Any]], repeat: int) -> float:
    times = []
    for _ in range(repeat + 1):
        start = time.perf_counter()
        with urllib.request.urlopen(f"{url}?{urllib.parse.urlencode(params)}", timeout=120) as response:  # noqa: S310
            json.load(response)
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])  # the first one warms up


# In the page: relayout to [lo, hi], then wait for the redraw of that range; ms from the call to the drawn chart.
_ZOOM = """async ([lo, hi]) => {
  const probe = window.__runstream, draws = probe.draws, start = performance.now();
  await Plotly.relayout('curves-chart', {'xaxis.range': [lo, hi]});
  const deadline = start + 60000;
  while (!(probe.draws > draws && probe.state.curves.length && probe.state.curves.every(c => c.x[0] >= lo))) {
    if (performance.now() > deadline) throw new Error(`no redraw of [${lo}, ${hi}] in 60 s`);
    await new Promise(resolve => setTimeout(resolve, 5));
  }
  return probe.lastDraw - start;
}"""


def measure(url: str, ids: list[str], steps: int, repeat: int) -> dict[str, list[float]]:
    from playwright.sync_api import sync_playwright

    figures: dict[str, list[float]] = {}
    add = figures.setdefault
    fragment = urllib.parse.urlencode({"runs": ",".join(ids), "metric": "loss"})
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        for _ in range(repeat):
            context = browser.new_context(viewport={"width": 1400, "height": 1000})
            page = context.new_page()
            errors: list[str] = []

            def console(message: Any, errors: list[str] = errors) -> None:
                if message.type == "error":
                    errors.append(message.text)

            page.on("console", console)
            page.goto(f"{url}/#{fragment}")
            page.wait_for_function(f"window.__runstream && window.__runstream.firstDraw > 0 && "
                                   f"window.__runstream.state.curves.length === {len(ids)} && "
                                   "window.__runstream.runsRendered > 0", timeout=120_000)
            probe = page.evaluate("({first: __runstream.firstDraw, shown: __runstream.runsShownAt, "
                                  "render: __runstream.runsRenderMs, rows: document.querySelectorAll("
                                  "'#runs-table tbody tr').length, points: __runstream.state.curves.reduce("
                                  "(n, c) => n + c.count.reduce((a, b) => a + b, 0), 0)})")
            if probe["points"] != len(ids) * steps:
                raise SystemExit(f"the chart covers {probe['points']} points, expected {len(ids) * steps}")
            add("time to first chart (10 curves, WebGL), ms", []).append(probe["first"])
            add(f"runs table shown ({probe['rows']} rows), ms from navigation", []).append(probe["shown"])
            add("runs table DOM build, ms", []).append(probe["render"])
            wide = (steps // 10, steps // 10 * 6)
            add(f"redraw after zoom to {wide[0]:,}-{wide[1]:,} (bucketed), ms", []).append(
                page.evaluate(_ZOOM, list(wide)))
            narrow = (steps // 2, steps // 2 + 500)
            add(f"redraw after zoom to {narrow[0]:,}-{narrow[1]:,} (every point), ms", []).append(
                page.evaluate(_ZOOM, list(narrow)))
            # a reload in the same browser: plotly.js from the HTTP cache, its compiled code cached by V8
            page.reload()
            page.wait_for_function(f"window.__runstream && window.__runstream.firstDraw > 0 && "
                                   f"window.__runstream.state.curves.length === {len(ids)}", timeout=120_000)
            add("time to first chart after a reload (plotly.js cached), ms", []).append(
                page.evaluate("__runstream.firstDraw"))
            if errors:
                raise SystemExit(f"console errors: {errors}")
            context.close()
            # the same chart drawn by plotly's SVG lines: headless chromium has software WebGL only
            context = browser.new_context(viewport={"width": 1400, "height": 1000})
            page = context.new_page()
            page.goto(f"{url}/#{fragment}&renderer=svg")
            page.wait_for_function(f"window.__runstream && window.__runstream.firstDraw > 0 && "
                                   f"window.__runstream.state.curves.length === {len(ids)}", timeout=120_000)
            add("time to first chart (10 curves, SVG: renderer=svg), ms", []).append(
                page.evaluate("__runstream.firstDraw"))
            context.close()
        browser.close()
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=1000, help="runs in the project (default 1000)")
    parser.add_argument("--steps", type=int, default=100_000, help="steps of the 10 long curves (default 100000)")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions; medians are printed (default 3)")
    parser.add_argument("--folder", type=Path, default=None, help="embedded folder (default: a new temp folder)")
    args = parser.parse_args()
    if not os.path.exists(CHROMIUM):
        raise SystemExit(f"{CHROMIUM} not found: install Debian's chromium (apt-get install chromium)")
    folder = args.folder or Path(tempfile.mkdtemp(prefix="runstream-ui-bench-")) / "ch"
    started = time.monotonic()
    dsn = generate(folder, args.runs, args.steps)
    generated = time.monotonic() - started
    ids = [f"run-{r:06d}" for r in range(LONG_RUNS)]
    with server(dsn) as url:
        curves = [("metric", "loss"), ("x", "step"), ("buckets", 1000), *(("run", run_id) for run_id in ids)]
        server_ms = api_seconds(f"{url}/api/curves", curves, args.repeat) * 1000
        runs_ms = api_seconds(f"{url}/api/runs", [("limit", 10000)], args.repeat) * 1000
        figures = measure(url, ids, args.steps, args.repeat)
    print(f"\n{args.runs:,} runs; {LONG_RUNS} curves of {args.steps:,} steps selected; generated in {generated:.0f} s; "
          f"median of {args.repeat}\n")
    print("| measure | median | all |")
    print("|---|---:|---|")
    for name, values in figures.items():
        print(f"| {name} | {statistics.median(values):.0f} | {', '.join(f'{v:.0f}' for v in values)} |")
    print(f"| /api/curves alone (10 curves x 1,000 buckets), ms | {server_ms:.0f} | |")
    print(f"| /api/runs alone ({args.runs:,} runs), ms | {runs_ms:.0f} | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
