"""Files every layer writes: the cache folder and atomic writes.

atomic_write(cache_dir() / "notes.txt", b"...")
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def cache_dir() -> Path:
    """Where converted weights and decoded datasets go: $RFTBENCH_CACHE, else $XDG_CACHE_HOME/rftbench."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "rftbench"
    return Path(os.environ.get("RFTBENCH_CACHE", default))


def atomic_write(path: str | Path, content: bytes | Callable[[BinaryIO], None]) -> None:
    """Write `content` (bytes, or a function writing to a file) to a temporary file of a unique name beside
    `path`, flush it to disk, then rename it over `path`: a reader sees the old file or the new one, never
    half of one, even with several writers."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            if isinstance(content, bytes):
                f.write(content)
            else:
                content(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
