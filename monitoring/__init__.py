"""Model and fleet monitoring: drift scores, GPU-hours and cost in ClickHouse SQL, and the Prometheus exporter."""
