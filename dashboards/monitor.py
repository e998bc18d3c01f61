"""`runstream monitor`: drift scores, performance, cost burn rates, budget usage and idle-GPU cost as Prometheus gauges.

Every `interval_s` the loop runs the drift (`drift.py`) and cost (`cost.py`) queries in ClickHouse
and swaps in a new snapshot of gauges; a scrape reads the latest snapshot and never waits on
ClickHouse. Series of a model or project that no longer has data disappear with the next snapshot.
The alert rules of `deploy/prometheus/` (generated from `alerts.py`) read these gauges.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from runstream.dashboards import cost, drift

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MonitorSettings:
    drift_window_s: int = 3600  # drift and performance over the trailing window
    interval_s: float = 30.0
    burn_window_s: int = 24 * 3600
    idle_window_s: int = 3600

    def __post_init__(self) -> None:
        if self.drift_window_s <= 0:
            raise ValueError(f"drift_window_s: expected seconds > 0, got {self.drift_window_s!r}")
        if self.interval_s <= 0:
            raise ValueError(f"interval_s: expected seconds > 0, got {self.interval_s!r}")


_DRIFT_LABELS = ["model", "version", "feature"]
_PERF_LABELS = ["model", "version", "metric"]


class MonitorCollector(Collector):
    """Holds the latest snapshot of gauges; `refresh` computes a new one from ClickHouse."""

    def __init__(self, client: Any, database: str, settings: MonitorSettings,
                 now: Callable[[], dt.datetime] | None = None) -> None:
        self.client = client
        self.database = database
        self.settings = settings
        self._now = now or (lambda: dt.datetime.now(dt.UTC))
        self._snapshot: list[Metric] = []
        self._lock = threading.Lock()

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            return list(self._snapshot)

    def refresh(self) -> None:
        now = self._now()
        s = self.settings
        start = now - dt.timedelta(seconds=s.drift_window_s)
        psi = GaugeMetricFamily("runstream_drift_psi", "Population stability index of a feature over the "
                                "trailing drift window, against the training reference", labels=_DRIFT_LABELS)
        ks = GaugeMetricFamily("runstream_drift_ks_distance", "Two-sample Kolmogorov-Smirnov distance of a "
                               "numeric feature over the trailing drift window", labels=_DRIFT_LABELS)
        samples = GaugeMetricFamily("runstream_drift_samples", "Sampled values of a feature in the trailing drift "
                                    "window", labels=_DRIFT_LABELS)
        for row in drift.drift_scores(self.client, self.database, start=start, end=now):
            labels = [row["model"], row["version"], row["feature"]]
            psi.add_metric(labels, float(row["psi"]))
            samples.add_metric(labels, float(row["samples"]))
            if row["ks"] is not None:
                ks.add_metric(labels, float(row["ks"]))
        perf = GaugeMetricFamily("runstream_model_performance", "Live metric of the labelled samples in the trailing "
                                 "drift window (accuracy, mae)", labels=_PERF_LABELS)
        baseline = GaugeMetricFamily("runstream_model_performance_baseline", "The metric at training time",
                                     labels=_PERF_LABELS)
        labelled = GaugeMetricFamily("runstream_model_labelled_samples", "Labelled samples behind "
                                     "runstream_model_performance", labels=_PERF_LABELS)
        for row in drift.performance(self.client, self.database, start=start, end=now):
            labels = [row["model"], row["version"], row["metric"]]
            perf.add_metric(labels, float(row["value"]))
            labelled.add_metric(labels, float(row["labelled"]))
            if row["baseline"] is not None:
                baseline.add_metric(labels, float(row["baseline"]))
        families: list[Metric] = [psi, ks, samples, perf, baseline, labelled]
        budget_rows = cost.budget_status(self.client, self.database, now=now,
                                         burn_window=dt.timedelta(seconds=s.burn_window_s),
                                         idle_window=dt.timedelta(seconds=s.idle_window_s))
        for name, key, text in (
            ("runstream_cost_month_to_date_usd", "month_to_date_usd", "GPU spend of the project this month"),
            ("runstream_cost_burn_rate_usd_per_hour", "burn_rate_usd_per_hour",
             "GPU spend per hour over the trailing burn window"),
            ("runstream_budget_projected_month_end_usd", "projected_month_end_usd",
             "Month-to-date spend plus the burn rate until the month ends"),
            ("runstream_budget_usd", "budget_usd", "The project's monthly budget"),
            ("runstream_budget_usage_ratio", "budget_usage_ratio", "Projected month-end spend / budget"),
            ("runstream_idle_gpu_cost_usd_per_hour", "idle_cost_usd_per_hour",
             "Cost per hour of GPUs held below the idle utilisation threshold, over the trailing idle window"),
        ):
            family = GaugeMetricFamily(name, text, labels=["project"])
            for row in budget_rows:
                if row[key] is not None:
                    family.add_metric([row["project"]], float(row[key]))
            families.append(family)
        with self._lock:
            self._snapshot = families


class Monitor:
    """The refresh loop and the /metrics endpoint."""

    def __init__(self, client: Any, database: str, settings: MonitorSettings | None = None,
                 registry: CollectorRegistry | None = None) -> None:
        self.settings = settings or MonitorSettings()
        self.registry = registry or CollectorRegistry()
        self.collector = MonitorCollector(client, database, self.settings)
        self.registry.register(self.collector)
        self.last_refresh = Gauge("runstream_monitor_last_refresh_timestamp_seconds",
                                  "Unix time of the last successful refresh", registry=self.registry)
        self.refresh_seconds = Gauge("runstream_monitor_refresh_seconds", "Duration of the last refresh",
                                     registry=self.registry)
        self.failures = Counter("runstream_monitor_refresh_failures", "Refreshes that failed", registry=self.registry)
        self._stop = threading.Event()
        self._last_ok = 0.0

    def refresh_once(self) -> bool:
        started = time.monotonic()
        try:
            self.collector.refresh()
        except Exception:
            self.failures.inc()
            log.exception("monitor: refresh failed; keeping the previous values")
            return False
        self.refresh_seconds.set(time.monotonic() - started)
        self.last_refresh.set(time.time())
        self._last_ok = time.monotonic()
        return True

    def healthy(self) -> bool:
        return self._last_ok > 0 and time.monotonic() - self._last_ok < 3 * self.settings.interval_s + 60

    def run(self) -> None:
        """Refresh until `stop()`."""
        while not self._stop.is_set():
            self.refresh_once()
            self._stop.wait(self.settings.interval_s)

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.run, name="runstream-monitor", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self._stop.set()
