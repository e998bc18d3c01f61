"""`runstream server`'s settings, on the project's settings layer (runstream.producer.settings_layer):
the command's options > RUNSTREAM_SERVER_* > the `[server]` table of the config file > the defaults.

Where ClickHouse is (`--clickhouse`) comes from the one ClickHouse settings object
(runstream.consumer.clickhouse_settings), and Kafka's client options from the Kafka settings
(runstream.producer.kafka_settings), as for every other command; this object holds what only the server has.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

from pydantic import Field, field_validator

from runstream.producer.settings_layer import Settings, env, positive_seconds

DEFAULT_PORT = 8765
LOOPBACK_NAMES = ("localhost",)


class ServerSettings(Settings):
    """`runstream server`'s own settings."""

    config_table = "server"
    component = "server"

    host: str = Field(default="127.0.0.1", json_schema_extra=env("RUNSTREAM_SERVER_HOST"),
                      description="interface the HTTP API and UI listen on (no authentication: keep it on loopback "
                      "unless the network is trusted)")
    port: int = Field(default=DEFAULT_PORT, ge=0, le=65535, json_schema_extra=env("RUNSTREAM_SERVER_PORT"),
                      description="TCP port (0: any free port; the ready line says which)")
    spool: Path | None = Field(default=None, json_schema_extra=env("RUNSTREAM_SERVER_SPOOL"),
                               description="spool folder loaded continuously (default: the SDK's spool, "
                               "RUNSTREAM_SPOOL or ~/.runstream/spool, unless --kafka is given)")
    poll_s: float = Field(default=0.25, json_schema_extra=env("RUNSTREAM_SERVER_POLL"),
                          description="seconds between looks at the spool folder for new and grown files")
    metrics_interval_s: float | None = Field(
        default=None, json_schema_extra=env("RUNSTREAM_SERVER_METRICS_INTERVAL"),
        description="seconds between refreshes of the /metrics gauges (default: [monitor] interval_s, 30)")

    _positive = field_validator("poll_s")(positive_seconds)

    @field_validator("metrics_interval_s")
    @classmethod
    def _interval(cls, value: float | None) -> float | None:
        if value is not None and not value > 0:
            raise ValueError(f"metrics_interval_s: expected a positive number of seconds, got {value!r}")
        return value

    @field_validator("host")
    @classmethod
    def _host(cls, host: str) -> str:
        if not host or any(ch.isspace() for ch in host):
            raise ValueError(f"host: expected an interface name or address such as 127.0.0.1, got {host!r}")
        return host.strip("[]")

    @property
    def loopback(self) -> bool:
        """Whether only this machine can reach the server."""
        if self.host in LOOPBACK_NAMES:
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False
