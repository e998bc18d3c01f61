"""Consuming Kafka inside `runstream server` (`--kafka`): the consumer service in a thread of the process
that holds the embedded ClickHouse, writing through the server's sink.

The embedded engine admits one process per data folder, so the server cannot start `runstream consume`
beside itself: it runs the same `ConsumerService` (consumer/service.py: batches, dead letters, commits
after the sink's write) in a thread. If the service stops on an error (the broker unreachable at start,
a write it does not retry), the loader logs it and starts a new service after a back-off, through the
project's retry helper, until `stop` is set; Kafka redelivers what was not committed.
"""

from __future__ import annotations

import argparse
import logging
import os
import threading
from dataclasses import dataclass

from runstream.consumer.clickhouse_sink import ClickHouseSink
from runstream.consumer.retry import RetryPolicy, ShutdownRequested, retry
from runstream.consumer.service import ConsumerService, ConsumerSettings

log = logging.getLogger(__name__)

#: Restarts of a failed service: no limit (the server keeps serving what it has), backing off to 30 s.
RESTART_POLICY = RetryPolicy(attempts=None, deadline_s=None, initial_backoff_s=1.0, max_backoff_s=30.0)


class KafkaLoader:
    """`run(stop)` consumes `settings`' topics into `sink` until `stop` is set (`settings.clickhouse` is not
    connected to: the sink is the server's)."""

    def __init__(self, settings: ConsumerSettings, sink: ClickHouseSink, *,
                 restart_policy: RetryPolicy = RESTART_POLICY) -> None:
        self.settings = settings
        self.sink = sink
        self.restart_policy = restart_policy
        #: The service running now (None before the first start and between restarts).
        self.service: ConsumerService | None = None
        self.restarts = 0
        self._events = self._points = self._dead_letters = 0  # of the services that ended

    def run(self, stop: threading.Event) -> None:
        """Consume until `stop` is set; a service that fails is replaced after a back-off."""
        try:
            retry(lambda: self._consume(stop), policy=self.restart_policy, stop=stop,
                  what="the Kafka loader", retryable=lambda _error: not stop.is_set(), on_failure=self._failed)
        except ShutdownRequested:
            pass
        except Exception:
            if not stop.is_set():
                raise
            log.exception("Kafka loader: the consumer failed while stopping")

    def _consume(self, stop: threading.Event) -> None:
        service = ConsumerService(self.settings, sink=self.sink)  # creates missing topics: the broker may be away
        self.service = service
        try:
            service.run(stop)
        finally:
            self.service = None
            self._events += service.stats.events
            self._points += service.stats.points
            self._dead_letters += service.stats.dead_letters

    def _failed(self, error: BaseException) -> None:
        self.restarts += 1
        log.error("Kafka loader: the consumer stopped on an error; starting it again", exc_info=error)

    def counts(self) -> dict[str, int]:
        """Loader figures for the server's health answer (the service running now included)."""
        service = self.service
        stats = service.stats if service is not None else None
        return {"events": self._events + (stats.events if stats else 0),
                "points": self._points + (stats.points if stats else 0),
                "dead_letters": self._dead_letters + (stats.dead_letters if stats else 0),
                "restarts": self.restarts}


@dataclass(frozen=True)
class KafkaLoaderThread:
    """A loader and the thread that runs it (made, not started: the server starts it with its other loaders)."""

    loader: KafkaLoader
    thread: threading.Thread

    def counts(self) -> dict[str, int]:
        return self.loader.counts()


def start_kafka_loader(args: argparse.Namespace, sink: ClickHouseSink, stop: threading.Event) -> KafkaLoaderThread:
    """The loader of `runstream server --kafka ...` and its thread, ready for the server to start.

    Its settings come from the command's Kafka options as `runstream consume` reads them (`--kafka`,
    `--kafka-option`, `--topic-prefix`, `--group` over RUNSTREAM_* over the config file). It writes through
    a sink of its own on the server's client: a sink keeps per-write state (`completed`) that the spool
    follower's writes in another thread must not share.
    """
    from runstream.cli import _kafka_options
    from runstream.consumer.config import load_consumer_config

    given = {"kafka": args.kafka, "clickhouse": getattr(args, "clickhouse", None),
             "topic_prefix": getattr(args, "topic_prefix", None), "group": getattr(args, "group", None)}
    config = load_consumer_config(given, os.environ, getattr(args, "config", None),
                                  _kafka_options(getattr(args, "kafka_option", None) or []))
    own_sink = ClickHouseSink(config.settings.clickhouse, client=sink.client, database=sink.database)
    loader = KafkaLoader(config.settings, own_sink)
    log.info("Kafka loader: %s", config.describe())
    return KafkaLoaderThread(loader, threading.Thread(target=loader.run, args=(stop,), name="runstream-kafka",
                                                      daemon=True))
