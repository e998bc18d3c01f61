"""DDL of the drift and GPU-cost tables (templates over {db}), applied as migrations 3 and 4.

Drift facts are ReplacingMergeTree tables keyed on what identifies them, like the run facts: a
reference per (model, version, feature), a baseline per (model, version, metric), a sampled request
per (model, version, time, sample_id) and its feature values per feature. The price table and the
budgets are loaded whole from YAML each time (`runstream cost load`): every load carries its
`loaded_at`, and `current_gpu_prices` / `current_budgets` show the latest load only.
"""

from __future__ import annotations

DRIFT_STATEMENTS: tuple[str, ...] = (
    """CREATE TABLE IF NOT EXISTS {db}.drift_references (
    model LowCardinality(String),
    version LowCardinality(String),
    feature LowCardinality(String),
    kind LowCardinality(String),
    run_id String,
    logged_at DateTime64(6, 'UTC'),
    cut_points Array(Float64),
    categories Array(String),
    counts Array(UInt64),
    total UInt64,
    missing UInt64,
    mean Nullable(Float64),
    std Nullable(Float64),
    min Nullable(Float64),
    max Nullable(Float64),
    sample Array(Float64)
) ENGINE = ReplacingMergeTree(logged_at)
ORDER BY (model, version, feature)""",
    """CREATE TABLE IF NOT EXISTS {db}.drift_baselines (
    model LowCardinality(String),
    version LowCardinality(String),
    metric LowCardinality(String),
    value Float64,
    run_id String,
    logged_at DateTime64(6, 'UTC')
) ENGINE = ReplacingMergeTree(logged_at)
ORDER BY (model, version, metric)""",
    """CREATE TABLE IF NOT EXISTS {db}.prediction_samples (
    model LowCardinality(String),
    version LowCardinality(String),
    time DateTime64(6, 'UTC') CODEC(Delta, ZSTD(1)),
    sample_id String,
    host LowCardinality(String),
    sample_rate Float64,
    prediction_value Nullable(Float64),
    prediction_class Nullable(String),
    label_value Nullable(Float64),
    label_class Nullable(String)
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(time)
ORDER BY (model, version, time, sample_id)""",
    """CREATE TABLE IF NOT EXISTS {db}.prediction_features (
    model LowCardinality(String),
    version LowCardinality(String),
    feature LowCardinality(String),
    time DateTime64(6, 'UTC') CODEC(Delta, ZSTD(1)),
    sample_id String,
    value Nullable(Float64) CODEC(ZSTD(1)),
    category Nullable(String)
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(time)
ORDER BY (model, version, feature, time, sample_id)""",
)

COST_STATEMENTS: tuple[str, ...] = (
    """CREATE TABLE IF NOT EXISTS {db}.gpu_prices (
    loaded_at DateTime64(6, 'UTC'),
    gpu_model LowCardinality(String),
    cluster LowCardinality(String),
    tier LowCardinality(String),
    usd_per_gpu_hour Float64,
    idle_utilization_pct Float64
) ENGINE = MergeTree
ORDER BY (loaded_at, gpu_model, cluster, tier)""",
    """CREATE TABLE IF NOT EXISTS {db}.project_budgets (
    loaded_at DateTime64(6, 'UTC'),
    project LowCardinality(String),
    usd_per_month Float64
) ENGINE = MergeTree
ORDER BY (loaded_at, project)""",
    """CREATE VIEW IF NOT EXISTS {db}.current_gpu_prices AS
SELECT gpu_model, cluster, tier, usd_per_gpu_hour, idle_utilization_pct
FROM {db}.gpu_prices
WHERE loaded_at = (SELECT max(loaded_at) FROM {db}.gpu_prices)""",
    """CREATE VIEW IF NOT EXISTS {db}.current_budgets AS
SELECT project, usd_per_month
FROM {db}.project_budgets
WHERE loaded_at = (SELECT max(loaded_at) FROM {db}.project_budgets)""",
)

STATEMENTS = DRIFT_STATEMENTS + COST_STATEMENTS

