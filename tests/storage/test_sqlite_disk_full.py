"""Disk full, SQLite-specific: the page limit, a real ENOSPC, and errors at COMMIT time.

The backend-neutral behaviour (writes refused, unhealthy, resume) is in the contract suite;
these tests check what only the SQLite store can show.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from phalanx_aio import Entry, HardState, StorageError
from phalanx_aio.storage import SQLiteStorage

UNSHARE = ("unshare", "--user", "--map-root-user", "--mount", "sh", "-c")
CHILD = Path(__file__).resolve().parent / "storage_enospc_child.py"


def ents(first: int, last: int, size: int = 64) -> list[Entry]:
    """Entries of term 1 with distinct payloads of ``size`` bytes."""
    return [Entry(1, i, data=(b"%d:" % i).ljust(size, b".")) for i in range(first, last + 1)]


async def test_page_limit_full_then_raised(tmp_path: Path) -> None:
    path = tmp_path / "n1.db"
    store = SQLiteStorage(path, max_pages=12)
    await store.open(node_id="n1", cluster_id="c")
    acked: list[Entry] = []
    failures = 0
    for batch in range(40):  # fill the database batch by batch until it refuses
        new = ents(len(acked) + 1, len(acked) + 20, 500)
        try:
            await store.save(entries=new, hard_state=HardState(1, "n1", len(acked) + 20))
        except StorageError as exc:
            assert "disk full" in str(exc) and str(path) in str(exc)
            failures += 1
            assert not store.healthy
            assert store.last_error is exc
        else:
            acked += new
            assert failures == 0, f"batch {batch} succeeded after the database was full"
    assert acked and failures > 0
    # a full database still serves reads and its content is intact
    assert await store.read_snapshot() is None
    assert await store.set_max_pages(None) > 12
    acked += ents(len(acked) + 1, len(acked) + 20, 500)
    hs = HardState(1, "n1", len(acked))
    await store.save(entries=acked[-20:], hard_state=hs)
    assert store.healthy and store.last_error is None
    await store.aclose()
    reopened = SQLiteStorage(path)
    st = await reopened.open(node_id="n1", cluster_id="c")  # verifies every checksum
    await reopened.aclose()
    assert st.state.entries == tuple(acked)
    assert st.state.hard_state == hs
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    conn.close()


class FaultyConnection:
    """Wraps the store's sqlite3 connection and fails one statement with a chosen error code."""

    def __init__(self, real: sqlite3.Connection, fail_on: str, code: int, message: str) -> None:
        self.real, self.fail_on, self.code, self.message = real, fail_on, code, message
        self.armed = True

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        """Fail ``fail_on`` once armed (after running it for real, as a failing COMMIT may)."""
        if self.armed and sql == self.fail_on:
            err = sqlite3.OperationalError(self.message)
            err.sqlite_errorcode = self.code
            raise err
        return self.real.execute(sql, *args)

    def executemany(self, sql: str, rows: Any) -> sqlite3.Cursor:
        """Forwarded."""
        return self.real.executemany(sql, rows)

    @property
    def in_transaction(self) -> bool:
        """Forwarded."""
        return self.real.in_transaction


async def test_full_at_commit_rolls_back_and_resumes(tmp_path: Path) -> None:
    """ENOSPC while appending to the WAL at COMMIT (SQLITE_FULL): nothing kept, writes resume."""
    path = tmp_path / "n1.db"
    store = SQLiteStorage(path)
    await store.open(node_id="n1", cluster_id="c")
    await store.save(entries=ents(1, 5), hard_state=HardState(1, "n1", 2))
    real = store._raw
    assert real is not None
    faulty = FaultyConnection(real, "COMMIT", 13, "database or disk is full")
    store._raw = faulty  # type: ignore[assignment]
    with pytest.raises(StorageError, match="disk full"):
        await store.save(entries=ents(6, 10), hard_state=HardState(1, "n1", 8))
    assert not store.healthy and not store.failed
    faulty.armed = False
    await store.save(entries=ents(6, 7), hard_state=HardState(1, "n1", 6))
    assert store.healthy
    store._raw = real
    await store.aclose()
    s = SQLiteStorage(path)
    st = await s.open(node_id="n1", cluster_id="c")
    await s.aclose()
    assert st.state.entries == tuple(ents(1, 7))
    assert st.state.hard_state == HardState(1, "n1", 6)


async def test_io_error_is_fatal_until_reopened(tmp_path: Path) -> None:
    """A failed fsync (SQLITE_IOERR) may have lost anything: refuse writes until reopened."""
    path = tmp_path / "n1.db"
    store = SQLiteStorage(path)
    await store.open(node_id="n1", cluster_id="c")
    await store.save(entries=ents(1, 5), hard_state=HardState(1, "n1", 2))
    real = store._raw
    assert real is not None
    faulty = FaultyConnection(real, "COMMIT", 10 | (4 << 8), "disk I/O error")  # SQLITE_IOERR_FSYNC
    store._raw = faulty  # type: ignore[assignment]
    with pytest.raises(StorageError, match="refuses writes until it is reopened"):
        await store.save(entries=ents(6, 10))
    faulty.armed = False
    with pytest.raises(StorageError, match="failed earlier"):
        await store.save(entries=ents(6, 10))
    assert not store.healthy and store.failed and "disk I/O error" in str(store.last_error)
    store._raw = real
    await store.aclose()
    st = await store.open(node_id="n1", cluster_id="c")
    assert store.healthy and not store.failed
    assert st.state.entries == tuple(ents(1, 5))
    await store.save(entries=ents(6, 10))
    await store.aclose()


def _private_tmpfs_works(directory: Path) -> bool:
    if sys.platform != "linux" or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        [*UNSHARE, 'mount -t tmpfs -o size=1m tmpfs "$1"', "sh", str(directory)],
        capture_output=True,
    )
    return probe.returncode == 0


def test_real_enospc_on_a_tiny_filesystem(tmp_path: Path) -> None:
    """On a 4 MiB tmpfs (a private mount namespace; skipped where not permitted) filled up by a
    ballast file: SQLite's writes get ENOSPC, the store refuses and reports unhealthy, the
    ballast goes, writes resume, and a reopen finds exactly the acknowledged data."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if not _private_tmpfs_works(mnt):
        pytest.skip("cannot mount a private tmpfs here (needs unprivileged user namespaces)")
    script = 'mount -t tmpfs -o size=4m tmpfs "$1" && exec "$2" "$3" "$1"'
    proc = subprocess.run(
        [*UNSHARE, script, "sh", str(mnt), sys.executable, str(CHILD)],
        capture_output=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    report = json.loads(proc.stdout)
    assert report["ballast"] > 0
    assert len(report["errors"]) == 3
    for err in report["errors"]:
        assert "disk full" in err and "n1.db" in err, err
    assert report["healthy_when_full"] is False
    assert "disk full" in report["last_error"]
    assert report["healthy_after"] is True
    assert report["state_ok"] is True
