"""The schema catalogue: every version of every event schema this build knows, by fingerprint.

Schemas live in `avro/<event_type>.v<N>.avsc`. The newest version of each event type is
what producers write and what consumers read into; older versions stay bundled so that a
consumer can resolve any writer's schema it is sent, by fingerprint.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import fastavro
from fastavro.schema import to_parsing_canonical_form

from runstream.schemas.fingerprint import fingerprint_bytes

#: Event types of contract v1, in the order a run emits them. New types are added at the end.
#: drift_reference (training time) and prediction_samples (serving) feed drift monitoring;
#: run_heartbeat says a run's process is alive; run_curation carries tags, notes, archive and delete
#: after the fact (its topic is compacted by run id: `CURATION_EVENT_TYPE`); rank_metric_steps (every
#: rank's points, `log_all_ranks`), metric_histogram and metric_definitions (declared goals, summaries and
#: x-axes) carry the richer metrics, each on its own topic.
EVENT_TYPES = (
    "run_started", "metric_steps", "gpu_samples", "run_finished", "run_updated", "drift_reference",
    "prediction_samples", "run_heartbeat", "run_curation", "rank_metric_steps", "metric_histogram",
    "metric_definitions",
)

#: How a run's attempt can end (`run_finished.status`): `pruned` is a trial a hyperparameter search stopped
#: early (an Optuna trial pruned).
RUN_END_STATUSES = ("ok", "failed", "killed", "pruned")

#: The x-axes every curve has (`runstream curve --x`): the step, the point's wall time and seconds since the
#: run's first point. Any other axis is a metric logged at the same steps (`run.log(..., axes={...})`), so
#: the SDK refuses an axis logged under one of these names: it could never be chosen.
BUILTIN_AXES = ("step", "time", "relative")

#: The one event type whose topic keeps only each run's last message (cleanup.policy=compact).
CURATION_EVENT_TYPE = "run_curation"

_FILE_NAME = re.compile(r"^(?P<event_type>[a-z_]+)\.v(?P<version>\d+)\.avsc$")


@dataclass(frozen=True)
class SchemaVersion:
    """One version of one event type's schema, parsed once."""

    event_type: str
    version: int
    raw: dict[str, Any] = field(repr=False)
    parsed: Any = field(repr=False)
    canonical_form: str = field(repr=False)
    fingerprint: bytes

    @classmethod
    def from_json(cls, event_type: str, version: int, raw: dict[str, Any]) -> SchemaVersion:
        parsed = fastavro.parse_schema(raw)
        canonical = to_parsing_canonical_form(parsed)
        return cls(event_type, version, raw, parsed, canonical, fingerprint_bytes(canonical))

    @property
    def full_name(self) -> str:
        return str(self.parsed["name"])


class Catalogue:
    """All known schema versions, indexed by fingerprint and by event type."""

    def __init__(self, versions: list[SchemaVersion]) -> None:
        self._by_fingerprint: dict[bytes, SchemaVersion] = {}
        self._latest: dict[str, SchemaVersion] = {}
        for version in versions:
            self.register(version)

    def register(self, version: SchemaVersion) -> None:
        """Add a version; a newer version of a type becomes what that type is read into."""
        known = self._by_fingerprint.get(version.fingerprint)
        if known is not None and (known.event_type, known.version) != (version.event_type, version.version):
            raise ValueError(
                f"schema {version.event_type} v{version.version} has the same fingerprint as "
                f"{known.event_type} v{known.version}"
            )
        self._by_fingerprint[version.fingerprint] = version
        current = self._latest.get(version.event_type)
        if current is None or version.version > current.version:
            self._latest[version.event_type] = version

    def latest(self, event_type: str) -> SchemaVersion:
        try:
            return self._latest[event_type]
        except KeyError:
            raise KeyError(
                f"unknown event type {event_type!r}; known: {', '.join(sorted(self._latest))}"
            ) from None

    def by_fingerprint(self, fingerprint: bytes) -> SchemaVersion | None:
        return self._by_fingerprint.get(fingerprint)

    @property
    def event_types(self) -> list[str]:
        return sorted(self._latest)

    def versions(self) -> list[SchemaVersion]:
        return sorted(self._by_fingerprint.values(), key=lambda v: (v.event_type, v.version))


def load_bundled_versions() -> list[SchemaVersion]:
    """Read every `.avsc` shipped in this package (works from a checkout, editable install or wheel)."""
    versions = []
    folder = resources.files("runstream.schemas").joinpath("avro")
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        match = _FILE_NAME.match(entry.name)
        if match is None:
            continue
        raw = json.loads(entry.read_text(encoding="utf-8"))
        versions.append(SchemaVersion.from_json(match["event_type"], int(match["version"]), raw))
    if not versions:
        raise RuntimeError(f"no Avro schemas found in {folder}; the installation is incomplete")
    return versions


_BUNDLED: Catalogue | None = None


def bundled_catalogue() -> Catalogue:
    """The catalogue of bundled schemas, parsed once per process."""
    global _BUNDLED
    if _BUNDLED is None:
        _BUNDLED = Catalogue(load_bundled_versions())
    return _BUNDLED
