"""The web UI in real headless Chromium (Debian's, driven by Playwright; never a downloaded browser), against a
real `runstream server` subprocess on an embedded folder holding runs logged through the SDK.

Every answer is compared with what was logged and with the API's own answer: the runs the table lists, the
runs a filter keeps, the points plotly was handed (read back from the graph div), the compare table. The page
must load with every request outside 127.0.0.1 aborted (offline: plotly.js comes from the server) and print
no console error. A live training process logs to the spool the server follows, and each new point must be
in the chart within 2 s of its `log()` call (measured per step, not slept past). Screenshots of each view go
to docs/screenshots/ (the README shows them) and must not be blank.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from server_process import ServerProcess, running_server

pytestmark = pytest.mark.integration

playwright_sync = pytest.importorskip("playwright.sync_api")

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
SCREENSHOTS = Path(__file__).resolve().parents[1] / "docs" / "screenshots"
STEPS = 240
NAN, INF = float("nan"), float("inf")
T0_US = 1_764_000_000_000_000  # GPU samples' first time (2025-11-24)
LIVE_DEADLINE_S = 2.0


@dataclass
class Spec:
    name: str
    project: str
    params: dict[str, Any]
    special: dict[int, float] = field(default_factory=dict)  # loss at these steps instead of the curve's
    gpus: int = 0

    def loss(self) -> list[tuple[int, float]]:
        scale = self.params["lr"] * 300
        points = []
        for step in range(STEPS):
            wiggle = 0.05 * math.sin(step * 0.7 + scale)
            points.append((step, self.special.get(step, 2.0 * math.exp(-step / (40 + 30 * scale)) + 0.1 + wiggle)))
        return points

    def acc(self) -> list[tuple[int, float]]:
        return [(step, 1.0 - 0.9 * math.exp(-step / (40 + 2e4 * self.params["lr"])) - 0.01 * (step % 7))
                for step in range(STEPS)]


SPECS = [
    # a one-step spike (a band must keep it), a NaN, a +Inf: the chart draws gaps, the table prints them
    Spec("lr-1e-3", "vision", {"lr": 0.001, "batch": 32, "optimizer": "adam"}, {120: 8.0}, gpus=2),
    Spec("lr-3e-4", "vision", {"lr": 0.0003, "batch": 32, "optimizer": "adam"}, {90: NAN, STEPS - 1: NAN}),
    Spec("lr-1e-2", "vision", {"lr": 0.01, "batch": 64, "optimizer": "sgd"}, {60: INF}, gpus=1),
    Spec("audio-base", "audio", {"lr": 0.001, "batch": 16, "optimizer": "adam"}),
]


def _gpu_samples(spec: Spec) -> list[dict[str, Any]]:
    samples = []
    for gpu in range(spec.gpus):
        for i in range(90):
            util = 50 + 40 * math.sin(i / 9 + gpu)
            samples.append({"time_us": T0_US + i * 10_000_000, "gpu_index": gpu, "gpu_uuid": f"GPU-{spec.name}-{gpu}",
                            "gpu_model": "H100", "utilization_pct": util, "power_w": 200 + 3 * util,
                            "memory_used_bytes": int((20 + 30 * i / 90 + 5 * gpu) * 2**30),
                            "memory_total_bytes": 80 * 2**30})
    return samples


def _log_workload(spool: Path) -> dict[str, str]:
    """Log SPECS through the SDK (finished runs); run name -> run id."""
    import runstream

    ids = {}
    for spec in SPECS:
        run = runstream.init(spec.project, spec.name, params=spec.params, spool=str(spool), sample_interval=0)
        for (step, loss), (_, acc) in zip(spec.loss(), spec.acc(), strict=True):
            run.log({"loss": loss, "acc": acc}, step=step)
        if spec.gpus:
            run.log_gpu_samples(_gpu_samples(spec), host="node-1")
        run.finish("ok")
        ids[spec.name] = run.run_id
    ids["churn-reference"] = _log_drift(spool)
    return ids


def _log_drift(spool: Path) -> str:
    """A model's training reference and three hours of its live predictions, drifting more each hour
    (as tests/test_drift.py logs them); the reference run's id."""
    import numpy as np

    import runstream

    rng = np.random.default_rng(7)
    run = runstream.init("serving", "churn-reference", spool=str(spool), sample_interval=0)
    run.log_reference({"x": rng.normal(0.0, 1.0, 600), "country": list(rng.choice(["a", "b", "c"], 600))},
                      model="churn", version="3")
    run.finish("ok")
    hour = (int(time.time()) // 3600 - 3) * 3600
    monitor = runstream.monitor("churn", "3", sample_rate=1.0, batch_size=300, spool=str(spool))
    for window, shift in enumerate((0.0, 0.5, 1.5)):
        for i, x in enumerate(rng.normal(shift, 1.0, 300)):
            country = "abcd"[min(3, int(abs(x + shift) * 1.5))]
            monitor.log({"x": float(x), "country": country}, prediction="stay",
                        time_us=(hour + window * 3600) * 1_000_000 + i * 1000)
    monitor.close()
    return run.run_id


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "runstream.cli", *args], capture_output=True, text=True,
                          check=False, timeout=300)


@dataclass
class Served:
    server: ServerProcess
    ids: dict[str, str]
    live_spool: Path

    def get(self, path: str, **params: Any) -> Any:
        url = f"{self.server.url}{path}?{urllib.parse.urlencode(params, doseq=True)}"
        with urllib.request.urlopen(url, timeout=30) as response:  # noqa: S310 - the test's own loopback server
            return json.load(response)

    def error(self, path: str, **params: Any) -> tuple[int, str]:
        url = f"{self.server.url}{path}?{urllib.parse.urlencode(params, doseq=True)}"
        try:
            urllib.request.urlopen(url, timeout=30)  # noqa: S310
        except urllib.error.HTTPError as error:
            return error.code, json.load(error)["error"]
        raise AssertionError(f"{url} answered 200")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("ui")
    dsn = f"chdb://{root / 'ch'}"
    ids = _log_workload(root / "spool")
    # loaded by another process: the test process never opens an embedded folder (one per process)
    done = cli("ingest", str(root / "spool"), "--clickhouse", dsn)
    assert done.returncode == 0, done.stderr
    live_spool = root / "live-spool"
    live_spool.mkdir()
    with running_server("--clickhouse", dsn, "--spool", str(live_spool)) as server:
        yield Served(server, ids, live_spool)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright_sync.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@dataclass
class Page:
    page: Any
    console_errors: list[str]
    blocked: list[str]


@pytest.fixture
def page(browser: Any, served: Served) -> Iterator[Page]:
    """A fresh page (own context) that refuses every request leaving 127.0.0.1, recording errors."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    console_errors: list[str] = []
    blocked: list[str] = []

    def route(request_route: Any) -> None:
        host = urllib.parse.urlsplit(request_route.request.url).hostname
        if host == "127.0.0.1" or request_route.request.url.startswith("data:"):
            request_route.continue_()
        else:
            blocked.append(request_route.request.url)
            request_route.abort()

    context.route("**/*", route)
    tab = context.new_page()
    tab.on("console", lambda message: console_errors.append(message.text) if message.type == "error" else None)
    tab.on("pageerror", lambda error: console_errors.append(f"page error: {error}"))
    yield Page(tab, console_errors, blocked)
    context.close()


def _open(page: Page, served: Served, fragment: str = "") -> None:
    page.page.goto(f"{served.server.url}/{fragment}")
    page.page.wait_for_function("window.__runstream && window.__runstream.runsRendered > 0", timeout=20_000)


def _wait_for_rows(page: Page, count: int) -> None:
    page.page.wait_for_function(f"document.querySelectorAll('#runs-table tbody tr').length === {count}",
                                timeout=10_000)


def _table_run_ids(page: Page) -> list[str]:
    return list(page.page.eval_on_selector_all("#runs-table tbody tr", "rows => rows.map(r => r.dataset.run)"))


def _screenshot(page: Page, name: str, selector: str | None = None) -> Path:
    """Save docs/screenshots/NAME.png and check it is not blank: many distinct pixel values, a real spread."""
    from PIL import Image, ImageStat

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    target = page.page.locator(selector) if selector else page.page
    target.screenshot(path=str(path))
    with Image.open(path) as image:
        grey = image.convert("L")
        variance = ImageStat.Stat(grey).var[0]
        colours = len(image.convert("RGB").getcolors(maxcolors=1 << 24) or [])
    assert variance > 100 and colours > 50, f"{path}: blank-looking (variance {variance:.1f}, {colours} colours)"
    return path


def _plotted(y: Any) -> float | None:
    """A value as the chart must draw it: NaN and ±Inf ("NaN"/"Infinity" in JSON) as a gap."""
    if y is None or isinstance(y, str):
        return None
    return float(y) if math.isfinite(y) else None


def _select(page: Page, names: list[str], served: Served) -> None:
    for name in names:
        page.page.check(f'#runs-table tr[data-run="{served.ids[name]}"] input[type=checkbox]')


def _traces(page: Page, role: str = "last") -> list[dict[str, Any]]:
    return list(page.page.evaluate(
        """role => (document.getElementById('curves-chart').data || [])
             .filter(t => t.meta && t.meta.role === role)
             .map(t => ({run: t.meta.run, metric: t.meta.metric, x: Array.from(t.x), y: Array.from(t.y)}))""", role))


def test_page_loads_offline_and_lists_every_run(page: Page, served: Served) -> None:
    _open(page, served)
    assert sorted(_table_run_ids(page)) == sorted(served.ids.values())
    api = served.get("/api/runs")
    assert sorted(row[api["columns"].index("run_id")] for row in api["rows"]) == sorted(served.ids.values())
    # the table prints what was logged: the params of each run, and the final loss (NaN for lr-3e-4)
    header = page.page.eval_on_selector_all("#runs-table thead th", "cells => cells.map(c => c.textContent)")
    lr_column = next(i for i, text in enumerate(header) if text.startswith("params.lr"))
    loss_column = next(i for i, text in enumerate(header) if text.startswith("metrics.loss"))
    for spec in SPECS:
        cells = page.page.eval_on_selector_all(f'#runs-table tr[data-run="{served.ids[spec.name]}"] td',
                                               "cells => cells.map(c => c.textContent)")
        assert float(cells[lr_column]) == spec.params["lr"]
        final = spec.loss()[-1][1]
        assert cells[loss_column] == "NaN" if math.isnan(final) else abs(float(cells[loss_column]) - final) < 1e-5
    # offline: nothing was asked of another host, plotly.js came from the server
    assert page.blocked == []
    assert page.page.evaluate("typeof window.Plotly.react") == "function"
    assert page.console_errors == []
    _screenshot(page, "runs-table", "#runs-panel")


def test_filter_narrows_the_runs_and_a_malformed_one_says_why(page: Page, served: Served) -> None:
    _open(page, served)
    where = "params.lr < 0.005 and params.optimizer = 'adam'"
    expected = sorted(served.ids[s.name] for s in SPECS if s.params["lr"] < 0.005 and s.params["optimizer"] == "adam")
    api = served.get("/api/runs", where=where)
    assert sorted(row[api["columns"].index("run_id")] for row in api["rows"]) == expected
    assert 0 < len(expected) < len(SPECS)
    page.page.fill("#filter", where)
    page.page.press("#filter", "Enter")
    _wait_for_rows(page, len(expected))
    assert sorted(_table_run_ids(page)) == expected
    # a click on a column header sorts by it (twice: descending)
    lr_of = {served.ids[s.name]: s.params["lr"] for s in SPECS}
    page.page.click('#runs-table th[data-column="params.lr"]')
    assert [lr_of[r] for r in _table_run_ids(page)] == sorted(lr_of[r] for r in expected)
    page.page.click('#runs-table th[data-column="params.lr"]')
    assert [lr_of[r] for r in _table_run_ids(page)] == sorted((lr_of[r] for r in expected), reverse=True)
    assert page.console_errors == []

    malformed = "params.lr < and"
    status, message = served.error("/api/runs", where=malformed)
    assert status == 400 and "filter" in message, message
    page.page.fill("#filter", malformed)
    page.page.press("#filter", "Enter")
    page.page.wait_for_selector("#runs-error:not([hidden])", timeout=10_000)
    assert page.page.text_content("#runs-error") == message
    # the one console line a 400 answer makes in Chromium; nothing else
    assert all("status of 400" in error for error in page.console_errors), page.console_errors


def test_two_selected_runs_draw_the_api_points_and_zoom_refetches(page: Page, served: Served) -> None:
    _open(page, served)
    _select(page, ["lr-1e-3", "lr-3e-4"], served)
    page.page.wait_for_function(
        "document.getElementById('curves-chart').data && "
        "document.getElementById('curves-chart').data.filter(t => t.meta && t.meta.role === 'last').length === 2",
        timeout=15_000)
    ids = [served.ids["lr-1e-3"], served.ids["lr-3e-4"]]
    api = served.get("/api/curves", run=ids, metric="loss", x="step", buckets=1000)
    assert sorted(c["run"] for c in api["curves"]) == sorted(ids)
    drawn = {t["run"]: t for t in _traces(page)}
    bands = {role: {t["run"]: t for t in _traces(page, role)} for role in ("min", "max")}
    for curve in api["curves"]:
        trace = drawn[curve["run"]]
        assert trace["metric"] == "loss"
        assert trace["x"] == curve["x"]
        assert trace["y"] == [_plotted(v) for v in curve["last"]]
        assert bands["min"][curve["run"]]["y"] == [_plotted(v) for v in curve["min"]]
        assert bands["max"][curve["run"]]["y"] == [_plotted(v) for v in curve["max"]]
        # fewer points than buckets: every logged point, as logged (NaN/Inf as gaps, the spike kept)
        spec = next(s for s in SPECS if served.ids[s.name] == curve["run"])
        assert trace["x"] == [step for step, _ in spec.loss()]
        assert trace["y"] == [_plotted(v) for _, v in spec.loss()]
    assert max(y for y in drawn[served.ids["lr-1e-3"]]["y"] if y is not None) == 8.0
    _screenshot(page, "curves", "#view-curves")

    # zoom: the relayout asks again for that x range only, and the chart holds exactly the API's answer
    draws = page.page.evaluate("window.__runstream.draws")
    page.page.evaluate("Plotly.relayout('curves-chart', {'xaxis.range': [100, 130]})")
    page.page.wait_for_function(f"window.__runstream.draws > {draws} && "
                                "window.__runstream.state.zoom !== null", timeout=10_000)
    page.page.wait_for_function("document.getElementById('curves-chart').data.filter(t => t.meta && "
                                "t.meta.role === 'last').every(t => t.x.length && t.x[0] >= 100)", timeout=10_000)
    zoomed = served.get("/api/curves", run=ids, metric="loss", x="step", buckets=1000, x_min=100, x_max=130)
    drawn = {t["run"]: t for t in _traces(page)}
    for curve in zoomed["curves"]:
        assert drawn[curve["run"]]["x"] == curve["x"] and min(curve["x"]) >= 100 and max(curve["x"]) <= 130
        assert drawn[curve["run"]]["y"] == [_plotted(v) for v in curve["last"]]
    # log scale and smoothing act on the drawing only: the line is the debiased EMA of the API's values
    page.page.check("#log-scale")
    assert page.page.evaluate("document.getElementById('curves-chart').layout.yaxis.type") == "log"
    draws = page.page.evaluate("window.__runstream.draws")
    page.page.fill("#smoothing", "0.9")
    page.page.wait_for_function(f"window.__runstream.draws > {draws}", timeout=10_000)
    drawn = {t["run"]: t for t in _traces(page)}
    for curve in zoomed["curves"]:
        assert drawn[curve["run"]]["y"] == pytest.approx(_ema([_plotted(v) for v in curve["last"]], 0.9), rel=1e-9)
    # another metric as the x-axis: the API's x values of that axis
    page.page.select_option("#x-axis", "acc")
    page.page.wait_for_function("window.__runstream.state.axis === 'acc' && window.__runstream.state.zoom === null",
                                timeout=10_000)
    by_acc = served.get("/api/curves", run=ids, metric="loss", x="acc", buckets=1000)
    page.page.wait_for_function(f"document.getElementById('curves-chart').data.filter(t => t.meta && "
                                f"t.meta.role === 'last')[0].x.length === {len(by_acc['curves'][0]['x'])}",
                                timeout=10_000)
    drawn = {t["run"]: t for t in _traces(page)}
    for curve in by_acc["curves"]:
        assert drawn[curve["run"]]["x"] == curve["x"]
    assert page.console_errors == []


def _ema(values: list[float | None], weight: float) -> list[float | None]:
    """The UI's smoothing: exponential moving average, debiased, gaps left as gaps."""
    out: list[float | None] = []
    ema, n = 0.0, 0
    for value in values:
        if value is None:
            out.append(None)
            continue
        n += 1
        ema = ema * weight + (1 - weight) * value
        out.append(ema / (1 - weight**n))
    return out


def test_compare_and_gpu_views(page: Page, served: Served) -> None:
    names = ["lr-1e-3", "lr-1e-2"]
    ids = [served.ids[n] for n in names]
    _open(page, served, f"#runs={','.join(ids)}&view=compare")
    page.page.wait_for_selector("#compare-table tbody tr", timeout=15_000)
    api = served.get("/api/compare", run=ids)
    differs = api["columns"].index("differs")
    rows = page.page.eval_on_selector_all(
        "#compare-table tbody tr", "rows => rows.map(r => [r.className, Array.from(r.cells).map(c => c.textContent)])")
    assert len(rows) == len(api["rows"])
    for (classes, cells), row in zip(rows, api["rows"], strict=True):
        assert cells[0] == row[0]
        assert ("differs" in classes) == bool(row[differs]), (row, classes)
    marked = {cells[0] for classes, cells in rows if "differs" in classes}
    assert {"params.lr", "params.batch", "params.optimizer"} <= marked
    lr_row = next(cells for _, cells in rows if cells[0] == "params.lr")
    assert [float(v) for v in lr_row[1:3]] == [0.001, 0.01]
    _screenshot(page, "compare", "#view-compare")

    page.page.click('#tabs button[data-view="gpu"]')
    page.page.wait_for_selector("#gpu-table tbody tr", timeout=15_000)
    gpu = served.get("/api/gpu", run=ids)
    table = page.page.eval_on_selector_all(
        "#gpu-table tbody tr", "rows => rows.map(r => Array.from(r.cells).slice(0, 3).map(c => c.textContent))")
    assert [(name, int(gpus)) for name, gpus, _ in table] == [("lr-1e-3", 2), ("lr-1e-2", 1)]
    api_hours = sorted(float(run["gpu_hours"]) for run in gpu["runs"])
    assert sorted(float(hours) for _, _, hours in table) == pytest.approx(api_hours, rel=1e-5)
    # 89 gaps of 10 s per GPU: 2 GPUs and 1 GPU
    assert api_hours == pytest.approx([890 / 3600, 2 * 890 / 3600], rel=1e-6)
    traces = page.page.evaluate("document.getElementById('gpu-util-chart').data.length")
    assert traces == 2
    _screenshot(page, "gpu", "#view-gpu")
    assert page.console_errors == []


def test_drift_view(page: Page, served: Served) -> None:
    _open(page, served, "#view=drift")
    scores = served.get("/api/drift")["scores"]
    assert {(row["model"], row["feature"]) for row in scores} == {("churn", "x"), ("churn", "country")}
    page.page.wait_for_function(f"document.querySelectorAll('#drift-table tbody tr').length === {len(scores)}",
                                timeout=15_000)
    header = page.page.eval_on_selector_all("#drift-table thead th", "cells => cells.map(c => c.textContent)")
    psi = header.index("psi")
    shown = page.page.eval_on_selector_all("#drift-table tbody tr",
                                           f"rows => rows.map(r => r.cells[{psi}].textContent)")
    assert [float(v) for v in shown] == pytest.approx([row["psi"] for row in scores], rel=1e-5)
    # one line per (model, feature), its PSI per window; the shifted hours drift more than the first
    lines = page.page.evaluate("document.getElementById('drift-chart').data.map(t => [t.name, Array.from(t.y)])")
    assert len(lines) == 2
    numeric = next(y for name, y in lines if name.endswith("/ x"))
    assert numeric[-1] > numeric[0]
    _screenshot(page, "drift", "#view-drift")
    assert page.console_errors == []


_TRAINING = """
import os, sys, time, runstream
run = runstream.init("live", "live-run", spool=sys.argv[1], sample_interval=0)
print("run", run.run_id, flush=True)
step = 0
while not os.path.exists(sys.argv[2]) and step < 400:
    run.log({"loss": 1.0 / (step + 1)}, step=step)
    print("step", step, time.time(), flush=True)
    step += 1
    time.sleep(0.1)  # a training step's work
run.finish("ok")
"""


@pytest.mark.latency
def test_a_point_logged_live_appears_in_the_chart_within_2_s(page: Page, served: Served, tmp_path: Path) -> None:
    stop = tmp_path / "stop"
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(_TRAINING), str(served.live_spool), str(stop)],
                             stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    logged: dict[int, float] = {}
    try:
        assert child.stdout is not None
        first = child.stdout.readline().split()
        assert first[0] == "run", first
        run_id = first[1]
        os.set_blocking(child.stdout.fileno(), False)

        def read_steps() -> None:
            assert child.stdout is not None
            for line in child.stdout.readlines():
                parts = line.split()
                if parts and parts[0] == "step":
                    logged[int(parts[1])] = float(parts[2])

        # as a user would: the run shows in the API (the server loaded its first points), then it is opened
        deadline = time.monotonic() + 15
        while not any(row[0] == run_id for row in served.get("/api/runs")["rows"]):
            assert time.monotonic() < deadline, "the live run never reached the server"
            page.page.wait_for_timeout(100)
        _open(page, served, f"#runs={run_id}&metric=loss")
        seen: dict[int, float] = {}  # step -> when the chart first held it
        first_view = math.inf
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and sum(logged.get(s, 0) > first_view for s in seen) < 15:
            read_steps()
            xs = page.page.evaluate("(document.getElementById('curves-chart').data || []).filter(t => t.meta && "
                                    "t.meta.role === 'last').flatMap(t => Array.from(t.x))")
            now = time.time()
            for x in xs:
                seen.setdefault(int(x), now)
            first_view = min(seen.values(), default=math.inf)
            page.page.wait_for_timeout(50)  # this loop's cadence: look again 50 ms later
        stop.touch()
        read_steps()
    finally:
        stop.touch()
        try:
            child.wait(timeout=30)
        except subprocess.TimeoutExpired:
            child.kill()
    # steps logged once the page showed the run (the page's own loading is not what "live" measures)
    delays = sorted(seen[s] - logged[s] for s in seen if logged.get(s, 0) > first_view)
    assert len(delays) >= 5, f"the chart showed only steps {sorted(seen)} of {len(logged)} logged"
    print(f"live: {len(delays)} steps, delay median {delays[len(delays) // 2]:.2f} s, max {delays[-1]:.2f} s")
    timeline = [(s, round(logged[s] - first_view, 2), round(seen[s] - first_view, 2)) for s in sorted(seen)
                if logged.get(s, 0) > first_view]
    assert delays[-1] < LIVE_DEADLINE_S, f"(step, logged, shown) s after the first view: {timeline}"
    # once the run ended, the chart holds every step logged, as the API holds them
    page.page.wait_for_function(
        f"document.getElementById('curves-chart').data.find(t => t.meta && t.meta.role === 'last').x.length "
        f"=== {len(logged)}", timeout=10_000)
    final = served.get("/api/curves", run=[run_id], metric="loss", x="step", buckets=1000)["curves"][0]
    (trace,) = _traces(page)
    assert trace["x"] == final["x"] == sorted(logged)
    assert trace["y"] == [_plotted(v) for v in final["last"]] == [1.0 / (step + 1) for step in sorted(logged)]
    assert page.console_errors == []
