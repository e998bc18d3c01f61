"""Whether a process still runs, asked of its pid: the one check behind an attempt counter's owner
(producer/attempts.py) and a data folder's `runstream server` (server/discovery.py). Standard library only:
the bare SDK imports it."""

from __future__ import annotations

import os


def process_alive(pid: int) -> bool:
    """True while `pid` names a running process (another user's counts: signalling it is refused, not unknown)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
