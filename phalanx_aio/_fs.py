"""File-system durability shared by the store and the backup commands (private)."""

from __future__ import annotations

import os
import sys

__all__ = ["fsync_dir"]


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    """Make a rename (or a new file) in ``directory`` durable: fsync the directory itself.
    A no-op on Windows, which has no directory handles to sync."""
    if sys.platform == "win32":  # pragma: no cover
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
