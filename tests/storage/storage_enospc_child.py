"""Child of the real disk-full test: runs inside a private mount namespace on a tiny tmpfs.

    python storage_enospc_child.py DIR

Fills the file system with a ballast file so that SQLite gets ENOSPC, tries to write, frees
the ballast, writes again, reopens, and prints a JSON report on stdout for the parent test.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import sys

from phalanx_aio.core.types import Entry, HardState
from phalanx_aio.errors import StorageError
from phalanx_aio.storage import SQLiteStorage


def fill(path: str) -> int:
    """Write zeros to ``path`` until the file system is full; returns the bytes written."""
    written = 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        chunk = bytes(65536)
        while True:
            try:
                written += os.write(fd, chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                if len(chunk) == 1:
                    return written
                chunk = chunk[: len(chunk) // 2]
    finally:
        os.close(fd)


async def main(directory: str) -> dict[str, object]:
    """The scenario; returns the report."""
    path = os.path.join(directory, "n1.db")
    store = SQLiteStorage(path)
    await store.open(node_id="n1", cluster_id="c")
    acked = [Entry(1, i, data=b"acked %d" % i) for i in range(1, 21)]
    await store.save(entries=acked, hard_state=HardState(1, "n1", 10))
    report: dict[str, object] = {"ballast": fill(os.path.join(directory, "ballast"))}
    big = [Entry(1, i, data=os.urandom(1024)) for i in range(21, 421)]
    errors = []
    for attempt in range(3):
        try:
            await store.save(entries=big, hard_state=HardState(1, "n1", 30 + attempt))
            errors.append("succeeded")
        except StorageError as exc:
            errors.append(str(exc))
    report["errors"] = errors
    report["healthy_when_full"] = store.healthy
    report["last_error"] = str(store.last_error)
    os.remove(os.path.join(directory, "ballast"))
    await store.save(entries=big, hard_state=HardState(1, "n1", 400))
    report["healthy_after"] = store.healthy
    await store.aclose()
    again = SQLiteStorage(path)
    state = (await again.open(node_id="n1", cluster_id="c")).state
    await again.aclose()
    report["state_ok"] = state.entries == tuple(acked + big) and state.hard_state == HardState(1, "n1", 400)
    return report


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1]))))
