"""`runstream monitor`'s settings, on the project's settings layer (runstream.producer.settings_layer).

A module of its own so that the settings (and `runstream config`'s table of them) load without the
server extra that the exporter itself needs (prometheus-client).
"""

from __future__ import annotations

from pydantic import Field, field_validator

from runstream.producer.settings_layer import Settings, env, positive_seconds


class ExporterSettings(Settings):
    """`runstream monitor`'s settings (runstream.producer.settings_layer): arguments > RUNSTREAM_MONITOR_* >
    the `[monitor]` table of the config file."""

    config_table = "monitor"
    component = "monitor"

    listen: str = Field(default=":9109", json_schema_extra=env("RUNSTREAM_MONITOR_LISTEN"),
                        description="HOST:PORT serving /metrics, /healthz, /readyz")
    drift_window_s: int = Field(default=3600, json_schema_extra=env("RUNSTREAM_MONITOR_DRIFT_WINDOW"),
                                description="drift and performance over this trailing window (seconds)")
    interval_s: float = Field(default=30.0, json_schema_extra=env("RUNSTREAM_MONITOR_INTERVAL"),
                              description="seconds between refreshes of the gauges")
    burn_window_s: int = Field(default=24 * 3600, json_schema_extra=env("RUNSTREAM_MONITOR_BURN_WINDOW"),
                               description="GPU cost burn rate over this trailing window (seconds)")
    idle_window_s: int = Field(default=3600, json_schema_extra=env("RUNSTREAM_MONITOR_IDLE_WINDOW"),
                               description="idle-GPU cost over this trailing window (seconds)")
    stall_after_s: float = Field(
        default=15 * 60.0, json_schema_extra=env("RUNSTREAM_STALL_AFTER"),
        description="a running run whose step has not advanced for this long (heartbeats still arriving) is "
        "`stalled`: in `runstream runs`, the Client, the monitor's gauges and cost (seconds)")
    lost_window_s: int = Field(
        default=24 * 3600, json_schema_extra=env("RUNSTREAM_MONITOR_LOST_WINDOW"),
        description="runstream_lost_run_gpus counts the GPUs of runs lost within this trailing window "
        "(seconds; archive a run to drop it sooner)")

    _positive = field_validator("drift_window_s", "interval_s", "stall_after_s", "lost_window_s")(positive_seconds)
