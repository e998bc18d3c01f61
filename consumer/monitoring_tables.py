"""Table specs of the drift and GPU-cost tables, created by migrations 3 and 4 and by the cluster DDL.

Drift facts are ReplacingMergeTree tables keyed on what identifies them, like the run facts: a
reference per (model, version, feature), a baseline per (model, version, metric), a sampled request
per (model, version, time, sample_id) and its feature values per feature. On a cluster they are
sharded by model and version (and the sampled request), so a redelivered row meets its twin and a
request's features live on the shard of the request. The price table and the budgets are loaded
whole from YAML each time (`runstream cost load`): every load carries its `loaded_at`, and
`current_gpu_prices` / `current_budgets` show the latest load only. They are small and joined with
every shard's GPU usage, so a cluster keeps them whole on every node.
"""

from __future__ import annotations

from runstream.consumer.table_spec import EVERY_NODE, Table, View

_MODEL_VERSION = "cityHash64(model, version)"
_SAMPLED_REQUEST = "cityHash64(model, version, sample_id)"

DRIFT_REFERENCES = Table(
    "drift_references",
    (
        "model LowCardinality(String)",
        "version LowCardinality(String)",
        "feature LowCardinality(String)",
        "kind LowCardinality(String)",
        "run_id String",
        "logged_at DateTime64(6, 'UTC')",
        "cut_points Array(Float64)",
        "categories Array(String)",
        "counts Array(UInt64)",
        "total UInt64",
        "missing UInt64",
        "mean Nullable(Float64)",
        "std Nullable(Float64)",
        "min Nullable(Float64)",
        "max Nullable(Float64)",
        "sample Array(Float64)",
    ),
    engine="ReplacingMergeTree",
    version="logged_at",
    order_by="(model, version, feature)",
    sharding=_MODEL_VERSION,
)

DRIFT_BASELINES = Table(
    "drift_baselines",
    (
        "model LowCardinality(String)",
        "version LowCardinality(String)",
        "metric LowCardinality(String)",
        "value Float64",
        "run_id String",
        "logged_at DateTime64(6, 'UTC')",
    ),
    engine="ReplacingMergeTree",
    version="logged_at",
    order_by="(model, version, metric)",
    sharding=_MODEL_VERSION,
)

PREDICTION_SAMPLES = Table(
    "prediction_samples",
    (
        "model LowCardinality(String)",
        "version LowCardinality(String)",
        "time DateTime64(6, 'UTC') CODEC(Delta, ZSTD(1))",
        "sample_id String",
        "host LowCardinality(String)",
        "sample_rate Float64",
        "prediction_value Nullable(Float64)",
        "prediction_class Nullable(String)",
        "label_value Nullable(Float64)",
        "label_class Nullable(String)",
    ),
    engine="ReplacingMergeTree",
    partition_by="toYYYYMM(time)",
    order_by="(model, version, time, sample_id)",
    sharding=_SAMPLED_REQUEST,
)

PREDICTION_FEATURES = Table(
    "prediction_features",
    (
        "model LowCardinality(String)",
        "version LowCardinality(String)",
        "feature LowCardinality(String)",
        "time DateTime64(6, 'UTC') CODEC(Delta, ZSTD(1))",
        "sample_id String",
        "value Nullable(Float64) CODEC(ZSTD(1))",
        "category Nullable(String)",
    ),
    engine="ReplacingMergeTree",
    partition_by="toYYYYMM(time)",
    order_by="(model, version, feature, time, sample_id)",
    sharding=_SAMPLED_REQUEST,
)

GPU_PRICES = Table(
    "gpu_prices",
    (
        "loaded_at DateTime64(6, 'UTC')",
        "gpu_model LowCardinality(String)",
        "cluster LowCardinality(String)",
        "tier LowCardinality(String)",
        "usd_per_gpu_hour Float64",
        "idle_utilization_pct Float64",
    ),
    engine="MergeTree",
    order_by="(loaded_at, gpu_model, cluster, tier)",
    sharding=EVERY_NODE,
)

PROJECT_BUDGETS = Table(
    "project_budgets",
    (
        "loaded_at DateTime64(6, 'UTC')",
        "project LowCardinality(String)",
        "usd_per_month Float64",
    ),
    engine="MergeTree",
    order_by="(loaded_at, project)",
    sharding=EVERY_NODE,
)

CURRENT_GPU_PRICES = View(
    "current_gpu_prices",
    """
    SELECT gpu_model, cluster, tier, usd_per_gpu_hour, idle_utilization_pct
    FROM {gpu_prices}
    WHERE loaded_at = (SELECT max(loaded_at) FROM {gpu_prices})
    """,
)

CURRENT_BUDGETS = View(
    "current_budgets",
    """
    SELECT project, usd_per_month
    FROM {project_budgets}
    WHERE loaded_at = (SELECT max(loaded_at) FROM {project_budgets})
    """,
)

DRIFT_TABLES: tuple[Table, ...] = (DRIFT_REFERENCES, DRIFT_BASELINES, PREDICTION_SAMPLES, PREDICTION_FEATURES)
COST_TABLES: tuple[Table, ...] = (GPU_PRICES, PROJECT_BUDGETS)
COST_VIEWS: tuple[View, ...] = (CURRENT_GPU_PRICES, CURRENT_BUDGETS)
