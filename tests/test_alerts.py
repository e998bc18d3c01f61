"""Alert rules: the committed Prometheus rules are the generated ones, promtool's unit tests pass, the
Grafana rules come from the same definitions, and end to end a real Prometheus scraping `runstream
monitor` sees the drift alert fire on drifting data fed through the SDK's spool and ingest."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

import runstream
from runstream.consumer import ClickHouseSink, connect, ingest_spool
from runstream.consumer.health_server import HealthServer
from runstream.consumer.migrations import migrate
from runstream.dashboards import alerts
from runstream.monitoring.exporter import Exporter, ExporterSettings
from runstream.producer.run import Run
from runstream.producer.settings import ProducerSettings

REPO = Path(__file__).resolve().parent.parent
RULES = REPO / "deploy" / "prometheus" / "runstream-alerts.yml"
RULE_TESTS = REPO / "deploy" / "prometheus" / "tests" / "runstream-alerts.test.yml"
INSTALL = "apt-get install -y prometheus (Debian's package brings prometheus and promtool)"


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: {INSTALL}", pytrace=False)
    return path


def test_committed_rules_are_the_generated_ones() -> None:
    assert RULES.read_text() == alerts.render_prometheus_rules(), "run `runstream dashboards build` and commit"


def test_every_alert_has_a_promtool_unit_test_driving_it_to_firing() -> None:
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    fired = {case["alertname"] for test in tests for case in test["alert_rule_test"] if case["exp_alerts"]}
    assert fired == {alert.name for alert in alerts.ALERTS}


def test_promtool_checks_and_unit_tests_pass() -> None:
    promtool = _tool("promtool")
    check = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    unit = subprocess.run([promtool, "test", "rules", str(RULE_TESTS)], capture_output=True, text=True, check=False,
                          cwd=RULE_TESTS.parent)
    assert unit.returncode == 0, unit.stdout + unit.stderr


def test_grafana_alert_rules_come_from_the_same_definitions() -> None:
    group = json.loads(json.dumps(alerts.grafana_alert_group().to_json_data(), default=lambda o: o.to_json_data()))
    by_title = {rule["grafana_alert"]["title"]: rule for rule in group["rules"]}
    assert set(by_title) == {alert.name for alert in alerts.ALERTS}
    for alert in alerts.ALERTS:
        rule = by_title[alert.name]
        assert rule["for"] == alert.for_ and rule["labels"]["severity"] == alert.severity
        assert rule["grafana_alert"]["data"][0]["model"]["expr"] == alert.expr
        assert rule["grafana_alert"]["condition"] == "C"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - loopback
        return json.loads(response.read())


def _feed_drifting_data(spool: Path, dsn: str) -> tuple[Any, str]:
    """A stable model and a drifting one, through the SDK's spool and `ingest`."""
    rng = np.random.default_rng(11)
    settings = ProducerSettings.resolve(spool=str(spool), sample_interval_s=0)
    with Run(project="serving", settings=settings) as run:
        for model in ("stable", "churn"):
            run.log_reference({"x": rng.normal(0, 1, 2000)}, model=model, version="1")
    now_us = time.time_ns() // 1000
    for model, shift in (("stable", 0.0), ("churn", 2.0)):
        monitor = runstream.monitor(model, "1", sample_rate=1.0, spool=str(spool))
        for i, x in enumerate(rng.normal(shift, 1, 600)):
            monitor.log({"x": float(x)}, time_us=now_us - 60_000_000 + i * 1000)
        monitor.close()
    client, db = connect(dsn)
    migrate(client, db)
    assert not ingest_spool(spool, ClickHouseSink(dsn, client=client, database=db)).rejected
    return client, db


@pytest.fixture
def prometheus_for(tmp_path: Path) -> Iterator[Any]:
    processes: list[subprocess.Popen[bytes]] = []

    def start(target_port: int) -> str:
        binary = _tool("prometheus")
        rules = tmp_path / "rules.yml"
        rules.write_text(alerts.render_prometheus_rules(for_overrides={"RunstreamFeatureDrift": "2s"}, interval="1s"))
        config = tmp_path / "prometheus.yml"
        config.write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(rules)],
            "scrape_configs": [{"job_name": "runstream-monitor",
                                "static_configs": [{"targets": [f"127.0.0.1:{target_port}"]}]}],
        }))
        port = _free_port()
        log = open(tmp_path / "prometheus.log", "wb")  # noqa: SIM115 - closed with the process
        processes.append(subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "GOMAXPROCS": "2"},
        ))
        return f"http://127.0.0.1:{port}"

    yield start
    for process in processes:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.mark.integration
@pytest.mark.slow
def test_prometheus_fires_the_drift_alert_from_the_monitor(tmp_path: Path, clickhouse_dsn: str,
                                                           prometheus_for: Any) -> None:
    client, db = _feed_drifting_data(tmp_path / "spool", clickhouse_dsn)
    monitor = Exporter(client, db, ExporterSettings(drift_window_s=3600, interval_s=1))
    assert monitor.refresh_once()
    server = HealthServer("127.0.0.1:0", monitor.registry, alive=lambda: True, ready=monitor.healthy)
    server.start()
    monitor.start()
    try:
        url = prometheus_for(server.port)
        deadline = time.monotonic() + 120
        firing: list[dict[str, Any]] = []
        states: list[Any] = []
        while time.monotonic() < deadline:
            try:
                found = _get(f"{url}/api/v1/alerts")["data"]["alerts"]
            except OSError:  # not listening yet
                found = []
            states = [(a["labels"].get("model"), a["state"]) for a in found]
            firing = [a for a in found
                      if a["labels"]["alertname"] == "RunstreamFeatureDrift" and a["state"] == "firing"]
            if firing:
                break
            time.sleep(0.5)
        log = (tmp_path / "prometheus.log").read_text(errors="replace")[-3000:]
        assert firing, f"no drift alert fired within 120 s; alerts seen {states}; prometheus log:\n{log}"
        assert {(a["labels"]["model"], a["labels"]["feature"]) for a in firing} == {("churn", "x")}
        assert float(firing[0]["value"]) > alerts.PSI_ALERT_THRESHOLD
        psi = _get(f"{url}/api/v1/query?query=runstream_drift_psi")["data"]["result"]
        by_model = {r["metric"]["model"]: float(r["value"][1]) for r in psi}
        assert by_model["stable"] < 0.1 < alerts.PSI_ALERT_THRESHOLD < by_model["churn"]
    finally:
        monitor.stop()
        server.stop()
