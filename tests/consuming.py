"""Runs a real consumer service until it has handled a number of events (stored or dead-lettered), bounded
by a timeout so that a test that never gets them fails instead of hanging; shared by the Kafka tests."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from runstream.consumer import ConsumerService


def run_until(service: ConsumerService, done: Callable[[Any], bool], timeout: float = 90.0) -> Any:
    """The service's stats once `done(stats)` holds after a commit, or when `timeout` ran out."""
    stop = threading.Event()
    timer = threading.Timer(timeout, stop.set)
    timer.start()
    try:
        return service.run(stop, stop_when=done)
    finally:
        timer.cancel()


def consume_until(service: ConsumerService, events: int, timeout: float = 90.0) -> Any:
    """The service's stats once `events` events were stored or dead-lettered, or when `timeout` ran out."""
    return run_until(service, lambda s: s.events + s.dead_letters >= events, timeout)
