"""Drift scores in ClickHouse SQL: PSI and Kolmogorov-Smirnov distance per model, version, feature and window.

The queries are templates rendered for two callers: Python (the monitor, tests), with the time range
as literals, and Grafana, with the data source's macros (`$__timeFilter`, `$__timeInterval`).

- PSI (population stability index) over the reference's bins: numeric values fall in the bin
  `count(cut_points <= x)` (as numpy's `searchsorted(cuts, x, side="right")`), categories in their
  own bin or the last, 'other', one. PSI = sum((o - e) * ln(o / e)) over the bins' observed and
  expected shares, each floored at `PSI_EPSILON` so an empty bin does not make it infinite.
- KS: the two-sample Kolmogorov-Smirnov statistic (the largest gap between the empirical CDFs)
  between the reference's sample and the window's values, ClickHouse's `kolmogorovSmirnovTest`.
- Performance: accuracy (class predictions) and mean absolute error (numeric ones) of the labelled
  samples of each window, next to the training baseline of the same metric.
"""

# ruff: noqa: S608 - this module builds SQL from its own templates; database names are checked identifiers

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

PSI_EPSILON = 1e-4
#: PSI above this is usually read as a significant shift (0.1-0.2: moderate).
PSI_ALERT_THRESHOLD = 0.2


@dataclass(frozen=True)
class TimeRange:
    """How a query restricts and buckets time: literals for Python, macros for Grafana."""

    def filter(self, column: str) -> str:
        raise NotImplementedError

    def bucket(self, column: str) -> str:
        raise NotImplementedError


@dataclass(frozen=True)
class Literal(TimeRange):
    """[start_us, end_us) in microseconds; buckets of `window_s` seconds, or one bucket (0) for the whole range."""

    start_us: int
    end_us: int
    window_s: int = 0

    def filter(self, column: str) -> str:
        return (f"{column} >= fromUnixTimestamp64Micro(toInt64({int(self.start_us)}), 'UTC') "
                f"AND {column} < fromUnixTimestamp64Micro(toInt64({int(self.end_us)}), 'UTC')")

    def bucket(self, column: str) -> str:
        if self.window_s <= 0:
            return f"toDateTime({int(self.start_us) // 1_000_000}, 'UTC')"
        return f"toStartOfInterval(toDateTime({column}, 'UTC'), INTERVAL {int(self.window_s)} SECOND)"


@dataclass(frozen=True)
class GrafanaMacros(TimeRange):
    """grafana-clickhouse-datasource macros: the dashboard's time range and its interval."""

    def filter(self, column: str) -> str:
        return f"$__timeFilter({column})"

    def bucket(self, column: str) -> str:
        return f"$__timeInterval({column})"


def _where_model(model_filter: str) -> str:
    return f" AND ({model_filter})" if model_filter else ""


def psi_sql(db: str, time_range: TimeRange, model_filter: str = "") -> str:
    """model, version, feature, kind, window_start, samples, psi (and the bins' observed and expected counts)."""
    return f"""
SELECT model, version, feature, kind, window_start, samples, observed, expected,
       arraySum(arrayMap((o, e) -> (greatest(o / samples, {PSI_EPSILON}) - greatest(e / ref_total, {PSI_EPSILON}))
                                   * ln(greatest(o / samples, {PSI_EPSILON}) / greatest(e / ref_total, {PSI_EPSILON})),
                         observed, expected)) AS psi
FROM (
    SELECT model, version, feature, any(kind) AS kind, window_start, sum(n) AS samples,
           any(ref_counts) AS expected, arraySum(expected) AS ref_total,
           groupArray((bin, n)) AS pairs,
           arrayMap(i -> arraySum(arrayMap(p -> if(p.1 = i, p.2, 0), pairs)), range(length(expected))) AS observed
    FROM (
        SELECT f.model AS model, f.version AS version, f.feature AS feature, r.kind AS kind,
               {time_range.bucket('f.time')} AS window_start,
               toUInt32(if(r.kind = 'numeric', arrayCount(c -> c <= assumeNotNull(f.value), r.cut_points),
                  if(indexOf(r.categories, assumeNotNull(f.category)) = 0, length(r.categories),
                     toUInt64(indexOf(r.categories, assumeNotNull(f.category)) - 1)))) AS bin,
               any(r.counts) AS ref_counts,
               count() AS n
        FROM {db}.prediction_features AS f FINAL
        INNER JOIN (SELECT model, version, feature, kind, cut_points, categories, counts
                    FROM {db}.drift_references FINAL) AS r
            ON f.model = r.model AND f.version = r.version AND f.feature = r.feature
        WHERE {time_range.filter('f.time')}{_where_model(model_filter)}
          AND if(r.kind = 'numeric', f.value IS NOT NULL AND NOT isNaN(assumeNotNull(f.value)), f.category IS NOT NULL)
        GROUP BY model, version, feature, kind, window_start, bin
    )
    GROUP BY model, version, feature, window_start
)
"""


def ks_sql(db: str, time_range: TimeRange, model_filter: str = "") -> str:
    """model, version, feature, window_start, ks (numeric features with a reference sample)."""
    observed = f"""
        SELECT f.model AS model, f.version AS version, f.feature AS feature,
               {time_range.bucket('f.time')} AS window_start, assumeNotNull(f.value) AS x, 1 AS is_observed
        FROM {db}.prediction_features AS f FINAL
        INNER JOIN (SELECT model, version, feature FROM {db}.drift_references FINAL
                    WHERE kind = 'numeric' AND length(sample) > 0) AS r
            ON f.model = r.model AND f.version = r.version AND f.feature = r.feature
        WHERE {time_range.filter('f.time')}{_where_model(model_filter)}
          AND f.value IS NOT NULL AND NOT isNaN(assumeNotNull(f.value))"""
    return f"""
WITH observed AS ({observed}
)
SELECT model, version, feature, window_start,
       tupleElement(kolmogorovSmirnovTest('two-sided', 'asymp')(x, is_observed), 1) AS ks
FROM (
    SELECT model, version, feature, window_start, x, is_observed FROM observed
    UNION ALL
    SELECT w.model, w.version, w.feature, w.window_start, arrayJoin(r.sample) AS x, 0 AS is_observed
    FROM (SELECT DISTINCT model, version, feature, window_start FROM observed) AS w
    INNER JOIN (SELECT model, version, feature, sample FROM {db}.drift_references FINAL) AS r
        ON w.model = r.model AND w.version = r.version AND w.feature = r.feature
)
GROUP BY model, version, feature, window_start
"""


def drift_sql(db: str, time_range: TimeRange, model_filter: str = "") -> str:
    """PSI and KS together: model, version, feature, kind, window_start, samples, psi, ks (NULL for categories)."""
    return f"""
SELECT p.model AS model, p.version AS version, p.feature AS feature, p.kind AS kind,
       p.window_start AS window_start, p.samples AS samples, p.psi AS psi,
       if(p.kind = 'numeric', k.ks, NULL) AS ks
FROM ({psi_sql(db, time_range, model_filter)}) AS p
LEFT JOIN ({ks_sql(db, time_range, model_filter)}) AS k
    ON p.model = k.model AND p.version = k.version AND p.feature = k.feature AND p.window_start = k.window_start
ORDER BY model, version, feature, window_start
"""


def performance_sql(db: str, time_range: TimeRange, model_filter: str = "") -> str:
    """model, version, window_start, metric, value, baseline, labelled: live accuracy / MAE vs training."""
    return f"""
SELECT s.model AS model, s.version AS version, s.window_start AS window_start, s.metric AS metric,
       s.value AS value, b.value AS baseline, s.labelled AS labelled
FROM (
    SELECT model, version, window_start, tupleElement(m, 1) AS metric, tupleElement(m, 2) AS value,
           tupleElement(m, 3) AS labelled
    FROM (
        SELECT f.model AS model, f.version AS version, {time_range.bucket('f.time')} AS window_start,
               countIf(f.label_class IS NOT NULL AND f.prediction_class IS NOT NULL) AS labelled_classes,
               avgIf(toFloat64(f.prediction_class = f.label_class),
                     f.label_class IS NOT NULL AND f.prediction_class IS NOT NULL) AS accuracy,
               countIf(f.label_value IS NOT NULL AND f.prediction_value IS NOT NULL) AS labelled_values,
               avgIf(abs(assumeNotNull(f.prediction_value) - assumeNotNull(f.label_value)),
                     f.label_value IS NOT NULL AND f.prediction_value IS NOT NULL) AS mae
        FROM {db}.prediction_samples AS f FINAL
        WHERE {time_range.filter('f.time')}{_where_model(model_filter)}
        GROUP BY model, version, window_start
    )
    ARRAY JOIN [('accuracy', accuracy, labelled_classes), ('mae', mae, labelled_values)] AS m
    WHERE tupleElement(m, 3) > 0
) AS s
LEFT JOIN (SELECT model, version, metric, value FROM {db}.drift_baselines FINAL) AS b
    ON s.model = b.model AND s.version = b.version AND s.metric = b.metric
ORDER BY model, version, metric, window_start
"""


def distribution_sql(db: str, time_range: TimeRange, model_filter: str, feature: str) -> str:
    """bin, reference_share, live_share of one feature (e.g. 'prediction') over the reference's bins."""
    return f"""
SELECT if(r.kind = 'categorical', if(i < length(r.categories), r.categories[i + 1], 'other'),
          concat(if(i = 0, '-inf', toString(r.cut_points[i])), ' .. ',
                 if(i >= length(r.cut_points), '+inf', toString(r.cut_points[i + 1])))) AS bin,
       r.counts[i + 1] / arraySum(r.counts) AS reference_share,
       if(o.total > 0, o.observed[i + 1] / o.total, 0) AS live_share
FROM (SELECT model, version, kind, cut_points, categories, counts FROM {db}.drift_references FINAL
      WHERE feature = '{feature}') AS r
INNER JOIN (
    SELECT model, version, sum(samples) AS total, sumForEach(observed) AS observed
    FROM ({psi_sql(db, time_range, model_filter)}) AS p
    WHERE p.feature = '{feature}'
    GROUP BY model, version
) AS o ON r.model = o.model AND r.version = o.version
ARRAY JOIN range(length(r.counts)) AS i
ORDER BY i
"""


def _rows(client: Any, sql: str) -> list[dict[str, Any]]:
    result = client.query(sql)
    return [dict(zip(result.column_names, row, strict=True)) for row in result.result_rows]


def drift_scores(client: Any, db: str, *, start: datetime, end: datetime, window_s: int = 0) -> list[dict[str, Any]]:
    """Drift per model, version, feature and window (`window_s` 0: one window, the whole range)."""
    return _rows(client, drift_sql(db, _literal(start, end, window_s)))


def performance(client: Any, db: str, *, start: datetime, end: datetime, window_s: int = 0) -> list[dict[str, Any]]:
    return _rows(client, performance_sql(db, _literal(start, end, window_s)))


def _literal(start: datetime, end: datetime, window_s: int) -> Literal:
    return Literal(int(start.timestamp() * 1_000_000), int(end.timestamp() * 1_000_000), window_s)
