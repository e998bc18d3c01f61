"""Where the producer's worker puts events: Kafka, with the local spool as its fallback, or the spool alone.

The Kafka sink sends Avro single-object messages keyed by run id. An event Kafka could not take
(delivery timed out, local queue full while the broker is away) is decoded back and written to
the spool, never dropped; once a later delivery succeeds, the sealed spool files are replayed
in order and removed. The spool sink appends Avro object container files that any Avro tool
reads and that `runstream ingest` or `runstream sync` load later.

Sinks are not thread-safe: the worker calls them under its lock.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import weakref
from pathlib import Path
from typing import IO, Any, Protocol

import fastavro

from runstream.producer.kafka_settings import ErrorWatch, KafkaSettings
from runstream.producer.sync import replay_files
from runstream.schemas import Decoder, Encoder, bundled_catalogue, topic_for
from runstream.schemas.spool import (
    OPEN_SUFFIX,
    SPOOL_SUFFIX,
    TOPIC_PREFIX_KEY,
    WRITER_KEY,
    contract_order,
    recover_open_files,
    sealed_name,
    still_named,
    try_lock,
)

log = logging.getLogger(__name__)

#: How long `send` waits for room in librdkafka's queue before spooling the event instead.
QUEUE_FULL_WAIT_S = 1.0
#: How long a replay waits for the broker to acknowledge the replayed events.
REPLAY_TIMEOUT_S = 30.0
#: How often, at most, a connected producer looks for spool files that a dead process left open.
DEAD_WRITER_SCAN_S = 60.0


class EventSink(Protocol):
    def send(self, event_type: str, run_id: str, record: dict[str, Any]) -> None: ...

    def flush(self, timeout: float) -> int:
        """Push out what is buffered; return how many events are still undelivered."""
        ...

    def close_run(self, run_id: str) -> object:
        """The run finished: nothing more will be sent for it."""
        ...

    def close(self, timeout: float) -> None: ...


class SpoolSink:
    """Appends events to `<spool>/<run_id>/<event_type>.<segment>.avro.open`, renamed to `.avro` when sealed.

    Each flush writes the buffered records as a container-file block and fsyncs, so a crash
    loses at most what arrived since the last flush. Each open file is created exclusively and
    locked (`flock`, see `schemas/spool.py`) for as long as it is open: whoever gets the lock
    later knows this process is gone and may recover the file.

    Fork: `flock` locks belong to the open file description, which a forked child shares. So that
    a child that outlives its parent cannot keep the parent's files looking alive, the child points
    its inherited descriptors at /dev/null right after fork (without unlocking, which would unlock
    the parent's files too, and without flushing, which would write the parent's buffered bytes a
    second time). A child that execs drops them anyway (Python opens files close-on-exec). Only a
    fork done in C without Python's fork hooks, that then neither execs nor exits, would keep them.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self._catalogue = bundled_catalogue()
        self._writers: dict[tuple[str, str], tuple[IO[bytes], Any, Path]] = {}
        self.written = 0
        #: Set by a Kafka sink using this one as its outage spool: the topics its events were meant for.
        self.topic_prefix: str | None = None
        self._pid = os.getpid()
        _live_spool_sinks.add(self)

    def _open_segment(self, run_folder: Path, event_type: str) -> tuple[IO[bytes], Path]:
        """A new segment file, created exclusively and locked before anyone can mistake it for a dead one."""
        segment = 0
        while True:
            path = run_folder / f"{event_type}.{segment:04d}{OPEN_SUFFIX}"
            segment += 1
            if (path.with_name(path.name[: -len(OPEN_SUFFIX)] + SPOOL_SUFFIX)).exists():
                continue
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            except FileExistsError:
                continue
            except FileNotFoundError:  # a replay removed the emptied run folder just now
                run_folder.mkdir(parents=True, exist_ok=True)
                segment -= 1
                continue
            # A recoverer may have locked the empty file in the instant before us and removed it:
            # then the lock fails, or the name no longer points at our file. Try the next segment.
            if try_lock(fd) and still_named(fd, path):
                return open(fd, "wb"), path  # kept open across flushes, closed when sealed  # noqa: SIM115
            os.close(fd)

    def _writer(self, event_type: str, run_id: str) -> Any:
        key = (run_id, event_type)
        entry = self._writers.get(key)
        if entry is None:
            run_folder = self.folder / run_id
            run_folder.mkdir(parents=True, exist_ok=True)
            handle, path = self._open_segment(run_folder, event_type)
            schema = self._catalogue.latest(event_type)
            metadata = {WRITER_KEY: f"{socket.gethostname()}:{os.getpid()}"}
            if self.topic_prefix is not None:
                metadata[TOPIC_PREFIX_KEY] = self.topic_prefix
            writer = fastavro.write.Writer(handle, schema.parsed, codec="null", metadata=metadata)
            entry = (handle, writer, path)
            self._writers[key] = entry
        return entry[1]

    def send(self, event_type: str, run_id: str, record: dict[str, Any]) -> None:
        self._writer(event_type, run_id).write(record)
        self.written += 1

    @property
    def has_open_files(self) -> bool:
        return bool(self._writers)

    def flush(self, timeout: float) -> int:
        for handle, writer, _path in self._writers.values():
            writer.flush()
            handle.flush()
            os.fsync(handle.fileno())
        return 0

    def close_run(self, run_id: str) -> list[Path]:
        """Seal a run's files so that ingest and sync pick them up; return the sealed paths."""
        sealed = []
        for key in sorted(k for k in self._writers if k[0] == run_id):
            handle, writer, path = self._writers.pop(key)
            writer.flush()
            handle.flush()
            os.fsync(handle.fileno())
            final = sealed_name(path)
            path.rename(final)  # still locked: a recoverer waiting on the lock then finds the name gone
            handle.close()
            sealed.append(final)
        return sealed

    def seal_all(self) -> list[Path]:
        sealed = []
        for run_id in sorted({k[0] for k in self._writers}):
            sealed.extend(self.close_run(run_id))
        return sealed

    def close(self, timeout: float) -> None:
        self.seal_all()

    def _forget_after_fork(self) -> None:
        """In a forked child: let go of the parent's files without unlocking or writing them."""
        if self._pid == os.getpid():
            return
        devnull = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
        try:
            for handle, _writer, _path in self._writers.values():
                os.dup2(devnull, handle.fileno(), inheritable=False)
                # Keep the object: collecting it would flush (into /dev/null now) and may block on a
                # buffer lock held, at fork time, by a thread that does not exist in the child.
                _inherited_handles.append(handle)
        finally:
            os.close(devnull)
        self._writers.clear()
        self._pid = os.getpid()


#: Every SpoolSink of this process, so that a forked child can let go of their files.
_live_spool_sinks: weakref.WeakSet[SpoolSink] = weakref.WeakSet()
#: The parent's file objects in a forked child, kept (pointing at /dev/null) and never closed.
_inherited_handles: list[IO[bytes]] = []


def _forget_spool_files_in_child() -> None:
    for sink in list(_live_spool_sinks):
        sink._forget_after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_spool_files_in_child)


class KafkaSink:
    """Idempotent, compressed, acks=all delivery to one topic per event type, spooling what fails."""

    def __init__(
        self,
        kafka: str | KafkaSettings,
        topic_prefix: str,
        fallback: SpoolSink,
        *,
        delivery_timeout_s: float = 30.0,
        extra_config: dict[str, Any] | None = None,
    ) -> None:
        """`kafka`: the shared client settings (or bootstrap servers plus `extra_config` librdkafka options);
        acks=all and idempotence come from `KafkaSettings.producer_config` and cannot be overridden."""
        from confluent_kafka import Producer

        self.kafka = KafkaSettings.of(kafka, extra_config)
        self.errors = ErrorWatch(self.kafka, "producer")
        config = self.kafka.producer_config({
            "compression.type": "zstd",
            "linger.ms": 50,
            "batch.size": 1_000_000,
            "message.max.bytes": 8_000_000,
            "message.timeout.ms": int(delivery_timeout_s * 1000),
            "client.id": "runstream-producer",
        })
        config["error_cb"] = self.errors
        self._producer = self.kafka.build(Producer, config, "producer")
        self._catalogue = bundled_catalogue()
        self._encoder = Encoder(self._catalogue)
        self._decoder = Decoder(self._catalogue)
        self._prefix = topic_prefix
        self.fallback = fallback
        fallback.topic_prefix = topic_prefix  # written into its files: whose dead files we may replay
        self._undelivered: list[bytes] = []
        self._to_replay: list[Path] = []
        self._last_failure = 0.0
        self._last_success = 0.0
        self._last_scan = float("-inf")
        self.delivered = 0
        self.spooled = 0
        self.replayed = 0
        self.recovered_files = 0  # files dead writers left open in the spool folder, sealed for replay
        self.cut_bytes = 0  # torn last blocks cut from them

    def _on_delivery(self, error: Any, message: Any) -> None:
        if error is None:
            self.delivered += 1
            self._last_success = time.monotonic()
        else:
            self._last_failure = time.monotonic()
            self._undelivered.append(message.value())
            if len(self._undelivered) == 1:
                log.warning("runstream: Kafka delivery failed (%s); spooling to %s", error, self.fallback.folder)

    def send(self, event_type: str, run_id: str, record: dict[str, Any]) -> None:
        value = self._encoder.encode(event_type, record)
        topic = topic_for(self._prefix, event_type)
        deadline = time.monotonic() + QUEUE_FULL_WAIT_S
        while True:
            try:
                self._producer.produce(topic, value=value, key=run_id.encode(), on_delivery=self._on_delivery)
                break
            except BufferError:
                # librdkafka's queue is full (the broker is slow or away): serve reports, then give up to the spool.
                if time.monotonic() >= deadline:
                    self._last_failure = time.monotonic()
                    self._spool(event_type, run_id, record)
                    break
                self._producer.poll(0.05)
        self._producer.poll(0)
        self._spool_undelivered()

    def _spool(self, event_type: str, run_id: str, record: dict[str, Any]) -> None:
        self.fallback.send(event_type, run_id, record)
        self.spooled += 1

    def _spool_undelivered(self) -> None:
        failed, self._undelivered = self._undelivered, []
        for value in failed:
            event_type, record = self._decoder.decode(value)
            self._spool(event_type, record["run_id"], record)

    def purge_to_spool(self) -> int:
        """Shutdown with time running out (SIGTERM): take back what librdkafka has not sent yet and
        spool it, rather than lose it with the process; return the messages still in flight.

        Only messages never sent are purged (`in_flight=False`), so nothing can arrive twice.
        """
        self._producer.purge(in_queue=True, in_flight=False, blocking=True)
        for _ in range(1000):  # serve the purged messages' delivery reports: into _undelivered
            if not self._producer.poll(0):
                break
        self._spool_undelivered()
        self.fallback.flush(0)
        return len(self._producer)

    def flush(self, timeout: float) -> int:
        remaining = int(self._producer.flush(timeout))
        self._spool_undelivered()
        self.fallback.flush(timeout)
        if self._broker_is_back():
            self._replay()
        return remaining

    def _broker_is_back(self) -> bool:
        """The broker took our last delivery, and there is something to replay or to look for."""
        if not self._last_success > self._last_failure:
            return False
        pending = bool(self._to_replay) or self.fallback.has_open_files
        return pending or time.monotonic() - self._last_scan >= DEAD_WRITER_SCAN_S

    def _recover_dead_writers(self) -> list[Path]:
        """Seal the files that dead processes left open in our spool folder, so that they are replayed too.

        Only outage spool files meant for our own topic prefix: an offline run's files, or another
        deployment's, are left for `runstream ingest` / `sync`, where a person chooses the target.
        Files of live writers (this process's other sinks included) are locked and left alone;
        each file is sealed by one recoverer only, and `replay_files` claims each sealed file.
        """
        self._last_scan = time.monotonic()
        if not self.fallback.folder.is_dir():
            return []
        ours = self._prefix.encode()
        try:
            report = recover_open_files(self.fallback.folder,
                                        accept=lambda metadata: metadata.get(TOPIC_PREFIX_KEY) == ours)
        except OSError as error:
            log.warning("runstream: could not look for dead writers' spool files in %s: %s",
                        self.fallback.folder, error)
            return []
        if report.files:
            self.recovered_files += report.recovered
            self.cut_bytes += report.cut_bytes
            log.warning("runstream: recovered %d spool files left open by dead processes in %s (%d records, "
                        "%d torn bytes cut); replaying them", report.recovered, self.fallback.folder,
                        report.records, report.cut_bytes)
        return report.sealed

    def _replay(self) -> None:
        """Send the spooled events again, in their files' order, and remove each file once acknowledged."""
        self._to_replay.extend(self.fallback.seal_all())
        if time.monotonic() - self._last_scan >= DEAD_WRITER_SCAN_S:
            self._to_replay.extend(contract_order(self._recover_dead_writers()))
        files, self._to_replay = self._to_replay, []
        report = replay_files(files, self._producer, self._prefix, REPLAY_TIMEOUT_S)
        self.replayed += report.events
        self._to_replay.extend(report.left)
        self._to_replay.extend(report.busy)  # another process is replaying them: gone next time, or ours
        if report.left:
            log.warning("runstream: %d spool files not replayed yet; will retry", len(report.left))
        else:
            log.info("runstream: replayed %d spooled events to Kafka", report.events)

    def close_run(self, run_id: str) -> None:
        self._to_replay.extend(self.fallback.close_run(run_id))

    def close(self, timeout: float) -> None:
        remaining = self.flush(timeout)
        self._to_replay.extend(self.fallback.seal_all())
        if remaining or self._to_replay:
            log.error(
                "runstream: %d events undelivered and %d spool files left in %s; upload them later with "
                "`runstream sync %s --kafka ...`",
                remaining, len(self._to_replay), self.fallback.folder, self.fallback.folder,
            )
