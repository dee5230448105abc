"""Disk faults at the process level: ``phalanx-aio serve`` on a damaged or foreign SQLite file,
and a cluster whose disks fill up while it serves clients.

A damaged file (a flipped bit in an entry, in the snapshot, in the SQLite header; a truncated or
empty file) or one that belongs to another node or cluster must make ``serve`` exit with status 1
and one line on stderr naming the file and the problem, with no traceback, and leave the file
byte for byte as it was. A full disk (SQLite's page cap, the mechanism of
``tests/storage/test_sqlite_disk_full.py``) on a majority of the nodes must stop the
acknowledgements of client writes without corrupting anything; the writes resume once space
returns, and every acknowledged write is on every node and in every reopened file.
"""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from phalanx_aio import ConfState, Entry, EntryType, HardState, OutcomeUnknown, Snapshot, SnapshotMeta
from phalanx_aio._net import free_loopback_ports
from phalanx_aio.errors import PhalanxError
from phalanx_aio.kv.client import KVClient
from phalanx_aio.kv.state_machine import KVStateMachine
from phalanx_aio.storage import SQLiteStorage
from tests.helpers import poll_until
from tests.live_cluster import CLUSTER, DEADLINE, LiveCluster

SNAP_DATA = KVStateMachine().snapshot() + b"SNAPSHOT-BYTES" * 100


async def make_store(path: Path, node: str, cluster: str) -> None:
    """A closed store with a snapshot at 3, entries up to 40 and a hard state."""
    s = SQLiteStorage(path)
    await s.open(node_id=node, cluster_id=cluster)
    await s.save(
        entries=[Entry(1, i, EntryType.NORMAL, b"PAYLOAD-%04d-" % i + bytes(40)) for i in range(1, 41)]
    )
    conf = ConfState(voters=frozenset({"n1", "n2", "n3"}))
    await s.save_snapshot(Snapshot(SnapshotMeta(3, 1, conf), SNAP_DATA))
    await s.save(hard_state=HardState(1, node, 30))
    await s.aclose()


def flip_at(marker: bytes) -> Callable[[Path], None]:
    """Damage: flip one bit in the first occurrence of ``marker`` in the file."""

    def damage(path: Path) -> None:
        data = bytearray(path.read_bytes())
        at = data.find(marker)
        assert at >= 0, f"{marker!r} not in {path}"
        data[at + len(marker) // 2] ^= 0x04
        path.write_bytes(bytes(data))

    return damage


def truncate(keep: float) -> Callable[[Path], None]:
    """Damage: keep only this fraction of the file."""

    def damage(path: Path) -> None:
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * keep)])

    return damage


CASES: dict[str, tuple[str, str, Callable[[Path], None] | None, str]] = {
    # name: (owner node, owner cluster, damage, what the error says)
    "flipped entry bit": ("n1", "phalanx", flip_at(b"PAYLOAD-0017-"), "checksum"),
    "flipped snapshot bit": ("n1", "phalanx", flip_at(b"SNAPSHOT-BYTES" * 4), "snapshot"),
    "flipped header bit": ("n1", "phalanx", flip_at(b"SQLite format 3"), "not"),
    "truncated file": ("n1", "phalanx", truncate(0.5), "truncated"),
    "empty file": ("n1", "phalanx", truncate(0.0), "empty"),
    "another node's file": ("n2", "phalanx", None, "node 'n2'"),
    "another cluster's file": ("n1", "other", None, "cluster 'other'"),
}


def test_serve_refuses_damaged_and_foreign_files(tmp_path: Path) -> None:
    """All cases at once (one ``serve`` process each, run concurrently)."""
    ports = free_loopback_ports(2 * len(CASES))
    procs = {}
    digests = {}
    for i, (name, (owner, cluster, damage, _)) in enumerate(CASES.items()):
        data_dir = tmp_path / f"case{i}"
        data_dir.mkdir()
        db = data_dir / "n1.db"
        asyncio.run(make_store(db, owner, cluster))
        if damage is not None:
            damage(db)
        digests[name] = hashlib.sha256(db.read_bytes()).hexdigest()
        argv = [sys.executable, "-m", "phalanx_aio.cli.main", "serve", "--id", "n1"]
        argv += ["--listen", f"127.0.0.1:{ports[2 * i]}", "--data-dir", str(data_dir)]
        argv += ["--peer", f"n2=127.0.0.1:{ports[2 * i + 1]}", "--log-level", "warning"]
        procs[name] = (db, subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    failures = []
    for name, (db, proc) in procs.items():
        try:
            _, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            failures.append(f"{name}: serve kept running on a bad file")
            continue
        lines = [line for line in err.splitlines() if line.strip()]
        expected = CASES[name][3]
        if proc.returncode != 1:
            failures.append(f"{name}: exit status {proc.returncode}")
        if "Traceback" in err or len(lines) != 1:
            failures.append(f"{name}: stderr is not one line: {err!r}")
        elif str(db) not in lines[0] or expected not in lines[0]:
            failures.append(f"{name}: {lines[0]!r} does not name {db} and {expected!r}")
        if hashlib.sha256(db.read_bytes()).hexdigest() != digests[name]:
            failures.append(f"{name}: the refused file was modified")
    assert failures == [], failures


# ---------------------------------------------------------------------------------------------
# Disk full while serving


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LiveCluster]:
    """A live three-node cluster whose files are in ``tmp_path``; closed at the end."""
    c = LiveCluster(tmp_path, ("n1", "n2", "n3"))
    c.start()
    try:
        yield c
    finally:
        c.close()


def test_disk_full_stops_acknowledgements_without_corruption(cluster: LiveCluster, tmp_path: Path) -> None:
    c = cluster
    endpoints = list(c.addr.values())
    acked: dict[bytes, bytes] = {}
    unknown: set[bytes] = set()
    value = b"v" * 3000  # larger than a page: every write needs new pages

    async def put(kv: KVClient, key: bytes) -> bool:
        try:
            await kv.put(key, value + key)
        except (OutcomeUnknown, PhalanxError):
            unknown.add(key)
            return False
        acked[key] = value + key
        return True

    async def scenario() -> None:
        async with KVClient(endpoints, cluster_id=CLUSTER, timeout=DEADLINE) as kv:
            for i in range(5):
                assert await put(kv, b"before-%d" % i)
        # Fill two disks of three (a majority): nothing can be persisted by a quorum.
        full = ["n1", "n2"]
        for nid in full:
            await c.stores[nid].set_max_pages(1)  # the cap cannot go below the current size
        async with KVClient(endpoints, cluster_id=CLUSTER, timeout=1.0) as kv:
            results = [await put(kv, b"during-%d" % i) for i in range(3)]
        assert results == [False, False, False], "a write was acknowledged while a majority was full"
        assert any(not c.stores[nid].healthy for nid in full)
        assert all(node._failure is None for node in c.nodes.values()), "a node's loop failed"
        # Space returns: writes resume.
        for nid in full:
            await c.stores[nid].set_max_pages(None)
        async with KVClient(endpoints, cluster_id=CLUSTER, timeout=DEADLINE) as kv:
            for i in range(5):
                assert await put(kv, b"after-%d" % i)

        def converged() -> bool:
            for node in c.nodes.values():
                sm = node.state_machine
                assert isinstance(sm, KVStateMachine)
                if any(sm.get(k) != v for k, v in acked.items()):
                    return False
            return True

        await poll_until(converged, DEADLINE)
        for node in c.nodes.values():
            sm = node.state_machine
            assert isinstance(sm, KVStateMachine)
            assert all(sm.get(k) in (None, value + k) for k in unknown)

    c.run(scenario(), DEADLINE * 4)
    assert c.broken() == []
    c.close()

    async def reopen(nid: str) -> None:
        store = SQLiteStorage(tmp_path / f"{nid}.db")
        await store.open(node_id=nid, cluster_id=CLUSTER)  # verifies every checksum
        await store.aclose()

    for nid in c.ids:
        asyncio.run(reopen(nid))
        conn = sqlite3.connect(tmp_path / f"{nid}.db")
        try:
            assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        finally:
            conn.close()
