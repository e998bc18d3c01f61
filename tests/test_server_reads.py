"""Every read command works while `runstream server` holds the embedded folder, and prints what it printed before.

The embedded engine admits one process per folder. Each command's output is captured with the folder free (the
command opens it itself), then again while a real server process holds it (the command finds the server through
the file it wrote and sends its SQL there); both must be identical, byte for byte. Writes through the server are
refused with a message naming it, and a server killed with SIGKILL leaves nothing that stops a later direct read.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pyarrow.parquet as pq
import pytest
from server_process import running_server

import runstream
from runstream.server.discovery import SERVER_FILE

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "runstream.cli", *args], capture_output=True, text=True,
                          check=False, timeout=300)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("served")
    dsn = f"chdb://{root / 'ch'}"
    done = cli("demo", "--runs", "3", "--steps", "20", "--clickhouse", dsn, "--spool", str(root / "spool"))
    assert done.returncode == 0, done.stderr
    # The demo's simulated GPU samples run up to ~10 s ahead of the clock, and cost reports count samples up to
    # now: wait until the last one is in the past, so that both readings see the same samples.
    deadline = time.monotonic() + 60
    while cli("query", "SELECT toUInt8(max(time) < now()) AS past FROM gpu_samples", "--format", "csv",
              "--clickhouse", dsn).stdout.split() != ["past", "1"]:
        assert time.monotonic() < deadline, "the demo's GPU samples stay in the future"
        threading.Event().wait(0.5)
    ids = json.loads(cli("query", "SELECT run_name, run_id FROM runs FINAL ORDER BY run_name", "--format", "json",
                         "--clickhouse", dsn).stdout)
    return {"root": root, "dsn": dsn, "runs": {row["run_name"]: row["run_id"] for row in ids}}


def read_commands(demo: dict[str, Any]) -> dict[str, list[str]]:
    """Each read command as a user types it (every one the issue names, and the other readers)."""
    runs = demo["runs"]
    first, second = sorted(runs)[:2]
    return {
        "runs": ["runs", "--project", "demo"],
        "runs filtered": ["runs", "--project", "demo", "--where", "params.lr < 0.001", "--sort", "-metrics.acc",
                          "--format", "json"],
        "compare": ["compare", first, second],
        "best": ["best", "--project", "demo", "--metric", "acc", "--format", "csv"],
        "importance": ["importance", "--project", "demo", "--metric", "loss"],
        "reproduce": ["reproduce", runs[first], "--format", "json"],
        "query": ["query", "SELECT metric, count() AS n, sum(value) AS total, max(time) AS last FROM metric_points "
                  "FINAL GROUP BY metric ORDER BY metric", "--format", "json"],
        "cost": ["cost", "report", "--by", "run_id"],
        "drift": ["drift"],
        "curve": ["curve", runs[first], "--metric", "acc", "--format", "csv"],
        "lineage": ["lineage", runs[first]],
        "histograms": ["histograms", runs[first], "--format", "csv"],
    }


def outputs(demo: dict[str, Any]) -> dict[str, tuple[int, str, str]]:
    return {name: (done.returncode, done.stdout, done.stderr)
            for name, args in read_commands(demo).items()
            for done in [cli(*args, "--clickhouse", demo["dsn"])]}


def files_written(demo: dict[str, Any], label: str) -> dict[str, Any]:
    """What `report` and `export` write: the report's HTML and the export's tables."""
    out = demo["root"] / label
    report = cli("report", "--project", "demo", "--out", str(out / "report.html"), "--clickhouse", demo["dsn"])
    assert report.returncode == 0, report.stderr
    export = cli("export", "--project", "demo", "--out", str(out / "export"), "--clickhouse", demo["dsn"])
    assert export.returncode == 0, export.stderr
    tables = {path.name: pq.read_table(path) for path in sorted((out / "export").glob("*.parquet"))}
    return {"report": (out / "report.html").read_text(), "export": tables}


@pytest.fixture(scope="module")
def served(demo: dict[str, Any]) -> Iterator[dict[str, Any]]:
    before = outputs(demo)
    written = files_written(demo, "direct")
    with runstream.Client(demo["dsn"]) as client:
        frames = {"runs": client.runs("demo"), "history": client.metric_history(list(demo["runs"].values()), "acc")}
    with running_server("--clickhouse", demo["dsn"], "--no-spool") as server:
        yield {"before": before, "written": written, "frames": frames, "server": server}


def test_every_read_command_prints_the_same_through_the_server(demo: dict[str, Any],
                                                               served: dict[str, Any]) -> None:
    assert (demo["root"] / "ch" / SERVER_FILE).exists(), "the server announces itself beside the data"
    during = outputs(demo)
    for name, (code, stdout, stderr) in served["before"].items():
        assert code == 0, f"{name} (direct): {stderr}"
        assert stdout.strip(), f"{name} printed nothing"
        assert during[name] == (code, stdout, stderr), name


def test_report_export_and_the_python_client_read_through_the_server(demo: dict[str, Any],
                                                                     served: dict[str, Any]) -> None:
    written = files_written(demo, "served")
    assert len(written["export"]) >= 2
    for name, table in served["written"]["export"].items():
        assert written["export"][name].equals(table), name
    assert _without_generated_at(written["report"]) == _without_generated_at(served["written"]["report"])
    with runstream.Client(demo["dsn"]) as client:
        assert type(client.client).__name__ == "RemoteClient"
        assert client.runs("demo").equals(served["frames"]["runs"])
        assert client.metric_history(list(demo["runs"].values()), "acc").equals(served["frames"]["history"])


def test_writes_are_refused_with_a_message_naming_the_server(demo: dict[str, Any], served: dict[str, Any]) -> None:
    pid = str(served["server"].process.pid)
    for args in (["query", "CREATE TABLE scratch (x Int8) ENGINE = Memory"],
                 ["query", "INSERT INTO metric_points (run_id) VALUES ('x')"],
                 ["ingest", str(demo["root"] / "spool")],
                 ["migrate"]):
        done = cli(*args, "--clickhouse", demo["dsn"])
        assert done.returncode != 0, args
        assert "runstream server" in done.stderr and pid in done.stderr, (args, done.stderr)
        assert "Traceback" not in done.stderr, (args, done.stderr)
    tables = cli("query", "SELECT count() AS n FROM system.tables WHERE name = 'scratch'", "--format", "json",
                 "--clickhouse", demo["dsn"])
    assert json.loads(tables.stdout) == [{"n": 0}]


def test_a_killed_servers_file_does_not_stop_direct_reads(demo: dict[str, Any], served: dict[str, Any]) -> None:
    process = served["server"].process
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    assert (demo["root"] / "ch" / SERVER_FILE).exists(), "SIGKILL leaves the file behind"
    done = cli(*read_commands(demo)["runs"], "--clickhouse", demo["dsn"])
    assert (done.returncode, done.stdout) == served["before"]["runs"][:2], done.stderr


def _without_generated_at(html: str) -> str:
    """The report with its generation time taken out (it says when it was written)."""
    import re

    return re.sub(r"\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}(\.\d+)?( UTC)?", "<time>", html)
