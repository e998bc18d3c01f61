"""Content digests for data versions: `runstream.hash_path("data/train")` → "sha256:…".

Files are read in chunks (never whole into memory); a folder's digest covers every file's
relative path and bytes in sorted order, so renaming or editing any file changes it. Inputs
above `max_bytes` are refused rather than silently hashed for minutes; hashing that takes over a
second shows a bar of bytes on stderr when stderr is a terminal (`runstream.progress`).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TextIO

from runstream.progress import bar

CHUNK = 1 << 20
DEFAULT_MAX_BYTES = 64 * 1024**3
#: Unasked, the bar appears only for hashing that lasts longer than this.
PROGRESS_DELAY_S = 1.0


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
    """SHA-256 of a file or folder; raises ValueError naming the path when it exceeds `max_bytes`.

    `progress`: True shows a bar of bytes on `stream` (default stderr) at once, False never; None (the
    default) shows it for hashing that lasts over a second when stderr is a terminal or RUNSTREAM_PROGRESS=1.
    """
    root = Path(path)
    files = _files(root)
    total = sum(f.stat().st_size for f in files)
    if total > max_bytes:
        raise ValueError(f"data path {str(root)!r}: {total} bytes exceeds max_bytes={max_bytes}; raise the limit")
    digest = hashlib.sha256()
    with bar(f"hashing {root}", total, byte_units=True, show=progress, stream=stream,
             delay=PROGRESS_DELAY_S if progress is None else 0.0) as shown:
        for file in files:
            if root.is_dir():
                digest.update(file.relative_to(root).as_posix().encode() + b"\0")
            with open(file, "rb") as handle:
                while chunk := handle.read(CHUNK):
                    digest.update(chunk)
                    shown.update(len(chunk))
    return f"sha256:{digest.hexdigest()}"
