"""The freshness benchmark (bench/freshness.py) keeps working: a tiny run through the real broker gives a
freshness figure for every step logged, and the table holds every point, with and without FINAL."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_every_logged_step_gets_a_freshness_figure(kafka_bootstrap: str, tmp_path: Path) -> None:
    out = tmp_path / "freshness.json"
    # Its own process: the bench opens its own chDB folder, and chDB allows one folder per process.
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "freshness.py"), "--kafka", kafka_bootstrap, "--runs", "3",
         "--metrics", "4", "--steps-per-s", "10", "--duration", "1.5", "--partitions", "2",
         "--cases", "0.1:0.25,0.5:0.25:7", "--json", str(out)],
        capture_output=True, text=True, timeout=200, check=False, cwd=REPO,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads(out.read_text(encoding="utf-8"))["results"]
    assert len(results) == 2
    for result in results:
        steps = result["runs"] * result["steps"]
        assert result["steps_logged"] == steps == 3 * 15
        assert result["freshness_figures"] == steps
        points = steps * result["metrics"]
        assert result["rows_stored"] == points
        assert result["rows_stored_final"] == points
        assert result["dropped"] == 0
        # A row cannot be queryable before it was logged, nor (on an idle consumer) long after.
        assert 0 < result["p50_s"] <= result["p99_s"] <= result["max_s"] < 30
        assert result["messages"] > 0 and result["cost_us_per_message"] >= 0
    # The fleet (1,000 one-GPU runs, 20 metrics at 10 steps/s): 100 points per 0.5 s flush, cut at 7
    # points per event: 15 messages a flush.
    small = results[1]["fleet"]
    assert small["points_per_message"] == pytest.approx(100 / 15)
    assert small["messages_per_s"] == pytest.approx(1000 * 15 / 0.5)
