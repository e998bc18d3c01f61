"""The alerts, defined once: rendered as Prometheus rules (`deploy/prometheus/runstream-alerts.yml`)
and as Grafana alert rules (grafanalib's alert models) over a Prometheus data source.

Thresholds are module constants so the docs, the rules and the tests quote the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from runstream.monitoring.drift import PSI_ALERT_THRESHOLD
from runstream.monitoring.rank_skew import RANK_WINDOW_S, STEP_TIME_METRIC, STRAGGLER_FOR, STRAGGLER_RATIO

DRIFT_FOR = "15m"
DRIFT_MIN_SAMPLES = 100
PERFORMANCE_DROP = 0.05  # accuracy below the training baseline by more than 5 points
PERFORMANCE_MIN_LABELLED = 100
BUDGET_RATIO = 1.0
IDLE_COST_USD_PER_HOUR = 5.0
CONSUMER_LAG = 10_000
MONITOR_STALE_S = 900
RUN_STALLED_S = 900  # a run whose step has not advanced for 15 min while its heartbeats arrive
LOST_RUN_GPUS_FOR = "5m"


@dataclass(frozen=True)
class AlertRule:
    name: str
    expr: str
    for_: str
    severity: str
    summary: str
    description: str
    threshold: str  # in words, for the docs

    def prometheus(self) -> dict[str, Any]:
        return {
            "alert": self.name,
            "expr": self.expr,
            "for": self.for_,
            "labels": {"severity": self.severity, "team": "ml-platform"},
            "annotations": {"summary": self.summary, "description": self.description},
        }


ALERTS: tuple[AlertRule, ...] = (
    AlertRule(
        "RunstreamFeatureDrift",
        f"runstream_drift_psi > {PSI_ALERT_THRESHOLD} and runstream_drift_samples >= {DRIFT_MIN_SAMPLES}",
        DRIFT_FOR, "warning",
        "{{ $labels.model }} {{ $labels.version }}: feature {{ $labels.feature }} drifted "
        "(PSI {{ $value | printf \"%.2f\" }})",
        f"The population stability index of the feature against its training reference has stayed above "
        f"{PSI_ALERT_THRESHOLD} for {DRIFT_FOR} (with at least {DRIFT_MIN_SAMPLES} samples in the window).",
        f"PSI > {PSI_ALERT_THRESHOLD} for {DRIFT_FOR}, >= {DRIFT_MIN_SAMPLES} samples",
    ),
    AlertRule(
        "RunstreamModelPerformanceDrop",
        '(runstream_model_performance_baseline{metric="accuracy"} - runstream_model_performance{metric="accuracy"})'
        f' > {PERFORMANCE_DROP}'
        f' and runstream_model_labelled_samples{{metric="accuracy"}} >= {PERFORMANCE_MIN_LABELLED}',
        "30m", "critical",
        "{{ $labels.model }} {{ $labels.version }}: live accuracy is {{ $value | printf \"%.3f\" }} "
        "below training",
        f"Accuracy of the labelled production samples is more than {PERFORMANCE_DROP} below the training baseline.",
        f"accuracy < baseline - {PERFORMANCE_DROP} for 30m, >= {PERFORMANCE_MIN_LABELLED} labels",
    ),
    AlertRule(
        "RunstreamBudgetProjectedOverrun",
        f"runstream_budget_usage_ratio > {BUDGET_RATIO}",
        "1h", "warning",
        "Project {{ $labels.project }} is projected to spend {{ $value | humanizePercentage }} of its GPU budget",
        "Month-to-date GPU spend plus the current burn rate until month end exceeds the project's monthly budget.",
        f"projected month-end spend / budget > {BUDGET_RATIO} for 1h",
    ),
    AlertRule(
        "RunstreamIdleGPUCost",
        f"sum by (project) (runstream_idle_gpu_cost_usd_per_hour) > {IDLE_COST_USD_PER_HOUR}",
        "30m", "warning",
        "Project {{ $labels.project }} pays ${{ $value | printf \"%.2f\" }}/h for idle GPUs",
        "GPUs held by the project's runs sit below the idle utilisation threshold at a cost above the limit.",
        f"idle GPU cost > ${IDLE_COST_USD_PER_HOUR}/h for 30m",
    ),
    AlertRule(
        "RunstreamConsumerLagRising",
        f"sum by (topic) (runstream_consumer_lag) > {CONSUMER_LAG}"
        " and sum by (topic) (deriv(runstream_consumer_lag[10m])) > 0",
        "10m", "warning",
        "Consumer lag on {{ $labels.topic }} is {{ $value }} messages and growing",
        "The consumer group falls behind the producers: add consumers or partitions, or check ClickHouse.",
        f"lag > {CONSUMER_LAG} messages and growing, for 10m",
    ),
    AlertRule(
        "RunstreamDeadLettersRising",
        "sum by (reason) (increase(runstream_consumer_dead_letters_total[10m])) > 0",
        "5m", "warning",
        "Messages go to the dead-letter topic ({{ $labels.reason }})",
        "The consumer rejects messages (undecodable or invalid); read the dead-letter topic's headers for why.",
        "any dead letter in the last 10m, for 5m",
    ),
    AlertRule(
        "RunstreamRunStalled",
        f"runstream_stalled_run_seconds >= {RUN_STALLED_S}",
        "2m", "warning",
        "Run {{ $labels.run_name }} ({{ $labels.project }}) has not advanced a step for "
        "{{ $value | humanizeDuration }}",
        "Its heartbeats still arrive but its step stopped advancing: a hung collective, a dead data loader, "
        "a deadlock. Its GPUs are paid for and unused (`runstream runs` lists it as stalled).",
        f"step not advanced for {RUN_STALLED_S} s (heartbeats arriving), for 2m",
    ),
    AlertRule(
        "RunstreamLostRunsHoldingGPUs",
        "sum by (project) (runstream_lost_run_gpus) > 0",
        LOST_RUN_GPUS_FOR, "warning",
        "Project {{ $labels.project }}: lost runs held {{ $value }} GPUs",
        "Runs stopped sending heartbeats without finishing (killed -9, OOM, a node gone); their GPUs may "
        "still be allocated. Free them, then archive the runs (`runstream archive RUN`) to clear this.",
        f"GPUs of runs lost in the lost window > 0, for {LOST_RUN_GPUS_FOR}",
    ),
    AlertRule(
        "RunstreamRankStraggler",
        f"runstream_rank_step_time_ratio > {STRAGGLER_RATIO}",
        STRAGGLER_FOR, "warning",
        "Run {{ $labels.run_name }} ({{ $labels.project }}): rank {{ $labels.rank }} on {{ $labels.node }} "
        "takes {{ $value | printf \"%.2f\" }}x its run's median step time",
        f"The rank's median {STEP_TIME_METRIC} over the last {RANK_WINDOW_S} s has stayed above {STRAGGLER_RATIO}x "
        "the median of the run's ranks: a slow GPU or node, a throttled link, a noisy neighbour. Every other "
        "rank waits for it at each collective (`runstream stragglers`, `runstream ranks RUN --by-rank`).",
        f"a rank's step time > {STRAGGLER_RATIO}x its run's median, for {STRAGGLER_FOR}",
    ),
    AlertRule(
        "RunstreamMonitorStale",
        f"time() - runstream_monitor_last_refresh_timestamp_seconds > {MONITOR_STALE_S}",
        "5m", "warning",
        "runstream monitor has not refreshed for {{ $value | humanizeDuration }}",
        "Drift and cost gauges are stale: the monitor cannot query ClickHouse.",
        f"no refresh for {MONITOR_STALE_S} s, for 5m",
    ),
)


def prometheus_rules(
    alerts: tuple[AlertRule, ...] = ALERTS, *, for_overrides: dict[str, str] | None = None, interval: str = "1m"
) -> dict[str, Any]:
    """The rule file's content; `for_overrides` and `interval` shorten the waits (the end-to-end test)."""
    rules = [replace(a, for_=(for_overrides or {}).get(a.name, a.for_)).prometheus() for a in alerts]
    return {"groups": [{"name": "runstream", "interval": interval, "rules": rules}]}


def render_prometheus_rules(**kwargs: Any) -> str:
    import yaml  # type: ignore[import-untyped, unused-ignore]

    header = "# Generated by runstream.dashboards.alerts (`runstream dashboards build`); edit alerts.py, not this.\n"
    body: str = yaml.safe_dump(prometheus_rules(**kwargs), sort_keys=False, width=200)
    return header + body


def grafana_alert_group(prometheus_uid: str = "prometheus") -> Any:
    """The same alerts as Grafana-managed rules (grafanalib `AlertRulev9` in one `AlertGroup`)."""
    from grafanalib.core import (  # type: ignore[import-untyped, unused-ignore]
        EXP_REDUCER_FUNC_LAST,
        EXP_TYPE_MATH,
        EXP_TYPE_REDUCE,
        AlertExpression,
        AlertGroup,
        AlertRulev9,
        Target,
    )

    rules = []
    for alert in ALERTS:
        # A: the PromQL (series only where the rule holds); B: last value per series; C: B > 0 fires.
        rules.append(AlertRulev9(
            title=alert.name,
            uid=alert.name.lower()[:40],
            triggers=[
                Target(expr=alert.expr, refId="A", datasource=prometheus_uid, instant=True),
                AlertExpression(refId="B", expression="A", expressionType=EXP_TYPE_REDUCE,
                                reduceFunction=EXP_REDUCER_FUNC_LAST),
                AlertExpression(refId="C", expression="$B > 0", expressionType=EXP_TYPE_MATH),
            ],
            condition="C",
            evaluateFor=alert.for_,
            labels={"severity": alert.severity, "team": "ml-platform"},
            annotations={"summary": alert.summary, "description": alert.description},
            noDataAlertState="OK",
            errorAlertState="Alerting",
        ))
    return AlertGroup(name="runstream", folder="runstream", evaluateInterval="1m", rules=rules)
