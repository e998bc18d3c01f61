"""The project's one retry helper: attempt limit and deadline, exponential backoff with jitter.

It sleeps on a shutdown `Event`, so SIGTERM interrupts a wait at once, and it decides what is
worth retrying from error types and codes, never from message text.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

#: ClickHouse server error codes that a later attempt can succeed on (overload, timeouts, replicas,
#: too many parts, memory limit, Keeper session loss).
TRANSIENT_SERVER_CODES = frozenset({159, 164, 202, 203, 209, 210, 241, 242, 252, 279, 285, 319, 425, 999, 1000})

#: ClickHouse error codes of a storage fault that an operator (or a merge, or a TTL) clears: a full disk
#: (243 NOT_ENOUGH_SPACE), a filesystem error (1001 STD_EXCEPTION: chDB raises it for a read-only data
#: folder, "filesystem error: in create_directories: Read-only file system"), and the file I/O codes
#: (74-77 CANNOT_READ_FROM/WRITE_TO_FILE_DESCRIPTOR, CANNOT_OPEN/CLOSE_FILE; 87-88 seek/truncate;
#: 172 CANNOT_CREATE_DIRECTORY; 173 CANNOT_ALLOCATE_MEMORY; 204 CANNOT_FSYNC; 294 CANNOT_WRITE_TO_FILE;
#: 458 CANNOT_UNLINK; 586 CANNOT_CREATE_FILE; 641 CANNOT_APPEND_TO_FILE). Checked against chDB 26.9
#: through clickhouse-connect: both the full disk and the read-only folder raise `DatabaseError`
#: (not `OperationalError`), so they are recognised here by code.
STORAGE_CODES = frozenset({74, 75, 76, 77, 87, 88, 172, 173, 204, 243, 294, 458, 586, 641, 1001})

RETRYABLE_CLICKHOUSE_CODES = TRANSIENT_SERVER_CODES | STORAGE_CODES


class ShutdownRequested(Exception):
    """The stop event was set while waiting to retry: the caller should leave without committing."""


@dataclass(frozen=True)
class RetryPolicy:
    """How long to keep trying. `attempts=None` and `deadline_s=None` mean no limit: the consumer
    retries a retryable write until it succeeds or it is stopped, because an outage (a full disk, a
    ClickHouse upgrade) may last longer than any fixed give-up, and exiting would only restart the
    same wait elsewhere."""

    attempts: int | None = 10
    deadline_s: float | None = 300.0
    initial_backoff_s: float = 0.5
    max_backoff_s: float = 30.0

    def __post_init__(self) -> None:
        if self.attempts is not None and self.attempts < 1:
            raise ValueError(f"attempts: expected at least 1 or None (no limit), got {self.attempts!r}")
        if self.deadline_s is not None and self.deadline_s <= 0:
            raise ValueError(f"deadline_s: expected a positive number or None (no limit), got {self.deadline_s!r}")
        if self.initial_backoff_s <= 0 or self.max_backoff_s < self.initial_backoff_s:
            raise ValueError(
                f"backoff: expected 0 < initial ({self.initial_backoff_s!r}) <= max ({self.max_backoff_s!r})"
            )


def is_retryable(error: BaseException) -> bool:
    """Network trouble and ClickHouse's transient error codes are retried; anything else is a bug or bad data."""
    if isinstance(error, ConnectionError | TimeoutError):
        return True
    code = getattr(error, "code", None)
    if isinstance(code, int) and code in RETRYABLE_CLICKHOUSE_CODES:
        return True
    try:
        from clickhouse_connect.driver.exceptions import OperationalError
    except ImportError:  # pragma: no cover - clickhouse-connect is a dependency
        return False
    return isinstance(error, OperationalError)


def retry_reason(error: BaseException) -> str:
    """A short, bounded label for a failed attempt (a metric label): the ClickHouse code when there is one."""
    code = getattr(error, "code", None)
    if isinstance(code, int) and not isinstance(code, bool):
        kind = "storage" if code in STORAGE_CODES else "clickhouse"
        return f"{kind}_{code}"
    if isinstance(error, TimeoutError):
        return "timeout"
    if isinstance(error, ConnectionError):
        return "connection"
    return type(error).__name__


def retry(
    action: Callable[[], T],
    *,
    policy: RetryPolicy,
    stop: threading.Event,
    what: str,
    retryable: Callable[[BaseException], bool] = is_retryable,
    on_wait: Callable[[float], None] | None = None,
    on_failure: Callable[[BaseException], None] | None = None,
    rng: random.Random | None = None,
) -> T:
    """Run `action` until it succeeds, a non-retryable error, the attempt limit, or the deadline.

    `on_wait(seconds)` is called instead of a plain sleep when given (the consumer keeps its
    group membership alive there); it must return within about that time. `on_failure(error)` is
    called once for each failed attempt that will be retried.
    """
    pick = rng or random.Random()  # noqa: S311 - jitter, not security
    started = time.monotonic()
    backoff = policy.initial_backoff_s
    attempt = 0
    while True:
        attempt += 1
        try:
            return action()
        except Exception as error:
            elapsed = time.monotonic() - started
            if (not retryable(error) or attempt == policy.attempts
                    or (policy.deadline_s is not None and elapsed >= policy.deadline_s)):
                raise
            if on_failure is not None:
                on_failure(error)
            wait = min(backoff, policy.max_backoff_s)
            if policy.deadline_s is not None:
                wait = min(wait, max(0.0, policy.deadline_s - elapsed))
            wait *= pick.uniform(0.5, 1.0)
            log.warning("%s failed (attempt %d of %s): %s (%s); retrying in %.1fs",
                        what, attempt, policy.attempts or "unlimited", type(error).__name__,
                        retry_reason(error), wait)
            deadline = time.monotonic() + wait
            while (left := deadline - time.monotonic()) > 0:
                if stop.is_set():
                    raise ShutdownRequested(f"{what}: shutdown requested while retrying") from error
                if on_wait is not None:
                    on_wait(min(left, 1.0))
                else:
                    stop.wait(left)
            if stop.is_set():
                raise ShutdownRequested(f"{what}: shutdown requested while retrying") from error
            backoff = min(backoff * 2, policy.max_backoff_s)
