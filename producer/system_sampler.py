"""The background sampler: every `interval_s`, one `gpu_samples` event with GPU and host readings.

It follows the shape of a batch processor's worker: a daemon thread woken by an event, a
`shutdown(timeout)` that takes a last sample, and nothing that can raise into the training job.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from runstream.producer.gpu import NvmlGpus
from runstream.producer.host import HostReader

log = logging.getLogger(__name__)


class SystemSampler:
    def __init__(
        self,
        emit: Callable[[list[dict[str, Any]], dict[str, Any]], None],
        interval_s: float,
        gpus: NvmlGpus,
        host: HostReader | None,
    ) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s: expected a positive number of seconds, got {interval_s!r}")
        self._emit = emit
        self._interval_s = interval_s
        self.gpus = gpus
        self._host = host
        self._stop = threading.Event()
        self.samples_taken = 0
        self.errors = 0
        self._thread = threading.Thread(target=self._loop, name="runstream-sampler", daemon=True)
        if not gpus.available:
            log.debug("runstream: sampling host metrics only: %s", gpus.reason)

    def start(self) -> None:
        self._thread.start()

    def sample_once(self) -> None:
        """Read every GPU and the host now and emit one event; errors are counted, never raised."""
        try:
            now_us = time.time_ns() // 1000
            samples = self.gpus.sample(now_us)
            host = self._host.read() if self._host is not None else {}
            self._emit(samples, host)
            self.samples_taken += 1
        except Exception as error:
            self.errors += 1
            if self.errors == 1:
                log.warning("runstream: system sampling failed (further failures at debug level): %s", error)
            else:
                log.debug("runstream: system sampling failed: %s", error)

    def _loop(self) -> None:
        self.sample_once()
        while not self._stop.wait(self._interval_s):
            self.sample_once()

    def shutdown(self, timeout: float = 5.0) -> None:
        """Stop the thread, take a final sample so short runs have one, release NVML."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        self.sample_once()
        self.gpus.close()
