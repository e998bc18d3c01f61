"""Content digests for data versions: `runstream.hash_path("data/train")` → "sha256:…".

Files are read in chunks (never whole into memory); a folder's digest covers every file's
relative path and bytes in sorted order, so renaming or editing any file changes it. Inputs
above `max_bytes` are refused rather than silently hashed for minutes; large inputs show a
progress line on stderr.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from pathlib import Path
from typing import TextIO

CHUNK = 1 << 20
DEFAULT_MAX_BYTES = 64 * 1024**3
PROGRESS_ABOVE_BYTES = 256 * 1024**2


def _files(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise FileNotFoundError(f"data path {str(root)!r} does not exist")
    found: list[Path] = []
    for folder, dirs, names in os.walk(root):
        dirs.sort()
        found.extend(Path(folder) / name for name in sorted(names))
    return found


def hash_path(
    path: str | os.PathLike[str],
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    progress: bool | None = None,
    stream: TextIO | None = None,
) -> str:
    """SHA-256 of a file or folder; raises ValueError naming the path when it exceeds `max_bytes`."""
    root = Path(path)
    files = _files(root)
    total = sum(f.stat().st_size for f in files)
    if total > max_bytes:
        raise ValueError(f"data path {str(root)!r}: {total} bytes exceeds max_bytes={max_bytes}; raise the limit")
    show = total > PROGRESS_ABOVE_BYTES if progress is None else progress
    out = stream or sys.stderr
    digest = hashlib.sha256()
    done = 0
    last_report = 0.0
    for file in files:
        if root.is_dir():
            digest.update(file.relative_to(root).as_posix().encode() + b"\0")
        with open(file, "rb") as handle:
            while chunk := handle.read(CHUNK):
                digest.update(chunk)
                done += len(chunk)
                if show and time.monotonic() - last_report >= 0.5:
                    last_report = time.monotonic()
                    out.write(f"\rhashing {root}: {done / max(total, 1):6.1%} of {total / 1e6:,.0f} MB")
                    out.flush()
    if show:
        out.write(f"\rhashing {root}: 100.0% of {total / 1e6:,.0f} MB\n")
        out.flush()
    return f"sha256:{digest.hexdigest()}"
