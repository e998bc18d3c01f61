"""Host readings: CPU utilisation, memory, and the resident memory of the training process tree."""

from __future__ import annotations

import importlib
import logging
import os
from typing import Any

log = logging.getLogger(__name__)


class HostReader:
    """psutil-backed; `psutil` is an argument only so callers can pass a stand-in where it is missing."""

    def __init__(self, psutil_module: Any | None = None, pid: int | None = None) -> None:
        self._psutil: Any = psutil_module if psutil_module is not None else importlib.import_module("psutil")
        self._process = self._psutil.Process(pid or os.getpid())
        self._psutil.cpu_percent(None)  # the first call only sets the baseline

    def process_ids(self) -> set[int]:
        """This process and its children (DataLoader workers), whose GPU memory counts as the run's."""
        ids = {self._process.pid}
        try:
            ids.update(child.pid for child in self._process.children(recursive=True))
        except Exception as error:
            log.debug("cannot list child processes: %s", error)
        return ids

    def read(self) -> dict[str, Any]:
        memory = self._psutil.virtual_memory()
        rss = 0
        for process in [self._process, *self._children()]:
            try:
                rss += int(process.memory_info().rss)
            except Exception as error:  # a child may exit between listing and reading
                log.debug("cannot read memory of pid %s: %s", getattr(process, "pid", "?"), error)
        return {
            "host_cpu_pct": float(self._psutil.cpu_percent(None)),
            "host_memory_used_bytes": int(memory.total - memory.available),
            "host_memory_total_bytes": int(memory.total),
            "process_rss_bytes": rss,
        }

    def _children(self) -> list[Any]:
        try:
            return list(self._process.children(recursive=True))
        except Exception:
            return []
