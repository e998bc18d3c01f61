"""The live local server (`runstream server`): one process that owns the embedded ClickHouse, loads the spool
and Kafka as they grow, and serves the HTTP API, the Prometheus gauges and the web UI."""
