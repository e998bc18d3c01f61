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
RETRYABLE_CLICKHOUSE_CODES = frozenset({159, 164, 202, 209, 210, 241, 242, 252, 285, 319, 425, 999, 1000})


class ShutdownRequested(Exception):
    """The stop event was set while waiting to retry: the caller should leave without committing."""


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 10
    deadline_s: float = 300.0
    initial_backoff_s: float = 0.5
    max_backoff_s: float = 30.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"attempts: expected at least 1, got {self.attempts!r}")
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
    for attempt in range(1, policy.attempts + 1):
        try:
            return action()
        except Exception as error:
            elapsed = time.monotonic() - started
            if not retryable(error) or attempt == policy.attempts or elapsed >= policy.deadline_s:
                raise
            if on_failure is not None:
                on_failure(error)
            wait = min(backoff, policy.max_backoff_s, max(0.0, policy.deadline_s - elapsed))
            wait *= pick.uniform(0.5, 1.0)
            log.warning("%s failed (attempt %d of %d): %s; retrying in %.1fs",
                        what, attempt, policy.attempts, type(error).__name__, wait)
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
            backoff *= 2
    raise AssertionError("unreachable")  # pragma: no cover
