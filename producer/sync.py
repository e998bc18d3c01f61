"""Uploading spooled runs to Kafka: the producer's replay after an outage, and `runstream sync`.

A spool file is removed only after every event in it was acknowledged by the broker, so an
interrupted upload is simply run again (the consumer's deduplication absorbs the repeats). Each
file is claimed (locked, see `schemas/spool.py`) while it is uploaded and removed under that
lock, so two uploaders (a producer replaying, `runstream sync`) never send one file twice; files
that a dead process left open are recovered first, files of live writers are never touched.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runstream.producer.kafka_settings import ErrorWatch, KafkaSettings
from runstream.progress import bar
from runstream.schemas import Encoder, bundled_catalogue, topic_for
from runstream.schemas.spool import claim, read_spool_file, recover_open_files, spool_files

log = logging.getLogger(__name__)


@dataclass
class SyncReport:
    files: int = 0
    events: int = 0
    left: list[Path] = field(default_factory=list)  # not acknowledged: kept for the next try
    busy: list[Path] = field(default_factory=list)  # being uploaded by another process: skipped
    recovered: int = 0  # files that dead writers left open, sealed before the upload
    cut_bytes: int = 0  # torn last blocks cut from them
    live: int = 0  # files of writers still running, left alone


def replay_files(files: list[Path], producer: Any, topic_prefix: str, timeout: float,
                 on_file: Callable[[Path], None] | None = None) -> SyncReport:
    """Produce every event of `files` in order; delete each file whose events were all acknowledged.

    A file that is gone was uploaded by someone else; one that another process holds is `busy`.
    `on_file(path)` is called once each file is dealt with (for `runstream sync`'s progress bar).
    """
    encoder = Encoder(bundled_catalogue())
    report = SyncReport()
    for path in files:
        with claim(path) as fd:
            if fd is not None:
                _replay_file(path, producer, topic_prefix, timeout, encoder, report)
            elif path.exists():
                report.busy.append(path)
        if on_file is not None:
            on_file(path)
    return report


def _replay_file(path: Path, producer: Any, topic_prefix: str, timeout: float, encoder: Encoder,
                 report: SyncReport) -> None:
    """Upload one claimed file; remove it (still claimed) once the broker acknowledged every event."""
    failures: list[str] = []

    def on_delivery(error: Any, _message: Any) -> None:
        if error is not None:
            failures.append(str(error))

    count = 0
    for event_type, record in read_spool_file(path):
        value = encoder.encode(event_type, record)
        topic = topic_for(topic_prefix, event_type)
        while True:
            try:
                producer.produce(topic, value=value, key=record["run_id"].encode(), on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.1)
        count += 1
    remaining = producer.flush(timeout)
    if remaining or failures:
        log.warning("spool file %s: %d unacknowledged, %d failed; kept", path, remaining, len(failures))
        report.left.append(path)
        return
    path.unlink()
    report.files += 1
    report.events += count
    try:
        path.parent.rmdir()  # only when empty; a writer may be creating a file in it right now
    except OSError:
        pass


def sync_spool(folder: Path, kafka: str | KafkaSettings, topic_prefix: str, *, timeout: float = 60.0,
               extra_config: dict[str, Any] | None = None, progress: bool | None = None) -> SyncReport:
    """Upload every sealed spool file under `folder` (runs logged offline or during an outage).

    `kafka` is the shared client settings (or bootstrap servers plus `extra_config` librdkafka options).
    Credentials the brokers refuse stop the upload with `KafkaAuthenticationError` (naming the user,
    never the password) instead of waiting out the timeout on every file. `progress`: a bar of the files'
    bytes on stderr (None: when stderr is a terminal; see runstream.progress).
    """
    from confluent_kafka import Producer

    settings = KafkaSettings.of(kafka, extra_config)
    errors = ErrorWatch(settings, "sync")
    config = settings.producer_config({"compression.type": "zstd", "linger.ms": 50, "client.id": "runstream-sync"})
    config["error_cb"] = errors
    producer = settings.build(Producer, config, "sync producer")
    recovery = recover_open_files(folder)  # files that a killed process left open: sealed, then uploaded
    files = spool_files(folder)
    if files:
        _wait_for_brokers(producer, errors, min(timeout, 5.0))
    sizes = {path: _size(path) for path in files}  # measured before: an uploaded file is removed
    with bar("sync", sum(sizes.values()), byte_units=True, show=progress) as sent:
        report = replay_files(files, producer, topic_prefix, timeout, on_file=lambda path: sent.update(sizes[path]))
    report.recovered, report.cut_bytes, report.live = recovery.recovered, recovery.cut_bytes, recovery.live
    errors.check()
    return report


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:  # gone meanwhile (uploaded by another process)
        return 0


def _wait_for_brokers(producer: Any, errors: ErrorWatch, timeout: float) -> None:
    """Reach the brokers before replaying: an authentication failure raises here, at once; a broker that is
    away is left to the replay, which keeps the files it could not deliver."""
    from confluent_kafka import KafkaException

    deadline = time.monotonic() + timeout
    while True:
        producer.poll(0.1)
        errors.check()
        try:
            producer.list_topics(timeout=1.0)
            return
        except KafkaException:
            producer.poll(0.1)
            errors.check()
            if time.monotonic() >= deadline:
                return
