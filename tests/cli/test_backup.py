"""``phalanx-aio backup`` and ``restore``: an online copy of a live member under write load,
restored into a new single-node cluster that serves every acknowledged write; bad arguments;
damaged backups.

``main()`` runs its own event loop, so each call runs in a thread while the cluster keeps
running on the test's loop.
"""

from __future__ import annotations

import asyncio
import pathlib
import sqlite3
from collections.abc import AsyncIterator

import pytest

from phalanx_aio import HardState, SQLiteStorage
from phalanx_aio._net import free_loopback_ports
from phalanx_aio.cli.backup import restore_store
from phalanx_aio.cli.main import main
from phalanx_aio.cli.serve import ServeSettings, serve
from phalanx_aio.core.raft import bootstrap_state
from phalanx_aio.core.types import Entry, EntryType
from phalanx_aio.errors import ConfigError, StorageError
from phalanx_aio.kv import KVClient, KVStateMachine
from phalanx_aio.kv.state_machine import KVCommand, KVOp, encode_command
from phalanx_aio.node import _envelope
from tests.kv.cluster import CLUSTER, DEADLINE, KVCluster


@pytest.fixture
async def cluster(tmp_path: pathlib.Path) -> AsyncIterator[KVCluster]:
    data = tmp_path / "cluster"
    data.mkdir()
    c = KVCluster(data, ["n1", "n2", "n3"])
    for nid in c.ids:
        await c.start(nid, snapshot_every=64)  # so the backup holds a snapshot and a log after it
    try:
        yield c
    finally:
        await c.aclose()


async def test_backup_under_load_then_restore_serves_every_acknowledged_write(
    cluster: KVCluster, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    c = cluster
    leader = await c.leader()
    follower = await c.follower()
    acked: dict[str, str] = {}
    stop = asyncio.Event()

    async def writer(w: int) -> None:
        async with KVClient(list(c.addr.values()), cluster_id=CLUSTER, timeout=DEADLINE) as kv:
            i = 0
            while not stop.is_set():
                key, value = f"k{w}-{i}", f"v{w}-{i}"
                await kv.put(key, value)
                acked[key] = value
                i += 1

    writers = [asyncio.create_task(writer(w)) for w in range(4)]
    try:
        await c.until(lambda: len(acked) >= 300)
        # Everything acknowledged so far is committed at or below the leader's commit index;
        # once the follower has applied that far, its store holds it as committed.
        before, commit = dict(acked), leader.status().commit
        await c.until(lambda: follower.status().applied >= commit)
        await c.until(lambda: len(acked) > len(before))  # the writers are still going
        out = tmp_path / "backup.db"
        args = ["backup", "--data-dir", str(c.tmp), "--id", follower.id, "--out", str(out)]
        assert await asyncio.to_thread(main, args) == 0  # the writers keep writing meanwhile
        assert not any(w.done() for w in writers)  # none failed: the copy was taken under load
    finally:
        stop.set()
        await asyncio.gather(*writers)
    report = capsys.readouterr().out
    assert report.startswith(f"backed up node {follower.id} of cluster {CLUSTER} to {out}")
    snap_at = int(report.split("snapshot at ")[1].split(",")[0])
    assert snap_at > 0  # the restore below replays a snapshot and the log after it
    assert not out.with_name(out.name + ".partial").exists()
    assert not out.with_name(out.name + "-wal").exists()

    addr = f"127.0.0.1:{free_loopback_ports(1)[0]}"
    fresh = tmp_path / "restored"
    args = ["restore", "--from", str(out), "--data-dir", str(fresh), "--id", "r1", "--listen", addr]
    assert await asyncio.to_thread(main, args) == 0
    report = capsys.readouterr().out
    new_cluster = f"{CLUSTER}-restored"
    assert f"--cluster-id {new_cluster}" in report and (fresh / "r1.db").is_file()
    assert not list(fresh.glob("*.restoring*"))

    ready = asyncio.Event()
    settings = ServeSettings(id="r1", listen=addr, data_dir=fresh, cluster_id=new_cluster)
    server = asyncio.create_task(serve(settings, ready=ready))
    try:
        await asyncio.wait_for(ready.wait(), DEADLINE)
        async with KVClient([addr], cluster_id=new_cluster, timeout=DEADLINE) as kv:
            keys = sorted(before)
            got = await asyncio.gather(*(kv.get(k) for k in keys))
            missing = [k for k, v in zip(keys, got, strict=True) if v != before[k].encode()]
            assert missing == []
            assert await kv.put("after", "restore") is None  # the new cluster takes writes
            assert await kv.get("after") == b"restore"
            members = await kv.members()
            assert [(m.node_id, m.address, m.learner) for m in members] == [("r1", addr, False)]
    finally:
        server.cancel()
        with pytest.raises(asyncio.CancelledError):
            await server


def _offline_store(
    path: pathlib.Path, *, node_id: str = "n1", cluster_id: str = "old", puts: int = 20
) -> None:
    """A closed store holding the bootstrap entry and ``puts`` committed KV writes."""

    async def build() -> None:
        store = SQLiteStorage(path)
        await store.open(node_id=node_id, cluster_id=cluster_id)
        state = bootstrap_state({node_id: b"127.0.0.1:1"})
        entries = list(state.entries) + [
            Entry(2, i + 2, EntryType.NORMAL, _envelope.wrap(node_id, i + 1, _put(f"k{i}", f"v{i}")))
            for i in range(puts)
        ]
        await store.save(hard_state=HardState(2, node_id, puts + 1), entries=entries)
        await store.aclose()

    asyncio.run(build())


def _put(key: str, value: str) -> bytes:
    return encode_command(KVCommand(KVOp.PUT, key.encode(), value.encode()))


def test_offline_backup_and_restore_replays_committed_entries(tmp_path: pathlib.Path) -> None:
    data = tmp_path / "d"
    data.mkdir()
    _offline_store(data / "n1.db")
    out = tmp_path / "b.db"
    assert main(["backup", "--data-dir", str(data), "--out", str(out)]) == 0  # the only store
    sm = KVStateMachine()
    res = asyncio.run(
        restore_store(out, tmp_path / "new", node_id="x", address="127.0.0.1:9", state_machine=sm)
    )
    assert (res.index, res.term, res.cluster_id, res.source_node) == (21, 2, "old-restored", "n1")
    assert sm.data == {f"k{i}".encode(): f"v{i}".encode() for i in range(20)}

    async def reopen() -> None:
        store = SQLiteStorage(res.path)
        stored = await store.open(node_id="x", cluster_id="old-restored")
        await store.aclose()
        snap = stored.state.snapshot
        assert stored.state.entries == () and stored.state.hard_state == HardState(2, None, 21)
        assert snap.meta.index == 21 and snap.meta.conf.voters == frozenset({"x"})
        restored = KVStateMachine()
        restored.restore(snap.data)
        assert restored.data == sm.data

    asyncio.run(reopen())


@pytest.fixture
def backup_file(tmp_path: pathlib.Path) -> pathlib.Path:
    data = tmp_path / "src"
    data.mkdir()
    _offline_store(data / "n1.db", puts=200)
    out = tmp_path / "backup.db"
    assert main(["backup", "--data-dir", str(data), "--out", str(out)]) == 0
    return out


@pytest.mark.parametrize(
    "argv",
    [
        ["backup", "--data-dir", "d"],  # no --out
        ["backup", "--out", "f"],  # no --data-dir
        ["restore", "--from", "f", "--data-dir", "d", "--id", "x"],  # no --listen
        ["restore", "--from", "f", "--data-dir", "d", "--id", "x", "--listen", "nohost"],
        ["restore", "--from", "f", "--data-dir", "d", "--id", "x", "--listen", "h:99999"],
    ],
)
def test_bad_arguments_exit_2_with_usage(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: phalanx-aio") and "Traceback" not in err


def test_refusals_exit_2_with_one_line(
    backup_file: pathlib.Path, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = str(tmp_path / "src")
    two = tmp_path / "two"
    two.mkdir()
    for name in ("a.db", "b.db"):
        (two / name).write_bytes(backup_file.read_bytes())
    cases: list[tuple[list[str], str]] = [
        (
            ["backup", "--data-dir", str(two), "--out", "x.db"],
            "several stores (a.db, b.db); choose one with --id",
        ),
        (["backup", "--data-dir", str(tmp_path / "nope"), "--out", "x.db"], "not a directory"),
        (["backup", "--data-dir", src, "--id", "n9", "--out", "x.db"], "no store for node 'n9'"),
        (["backup", "--data-dir", src, "--out", str(backup_file)], "already exists"),
        (
            [
                "restore",
                "--from",
                str(backup_file),
                "--data-dir",
                str(tmp_path / "r"),
                "--id",
                "x",
                "--listen",
                "127.0.0.1:9",
                "--cluster-id",
                "old",
            ],
            "is the backup's own cluster",
        ),
        (
            [
                "restore",
                "--from",
                str(backup_file),
                "--data-dir",
                src,
                "--id",
                "n1",
                "--listen",
                "127.0.0.1:9",
            ],
            "already holds a store",
        ),
        (
            [
                "restore",
                "--from",
                str(tmp_path / "missing.db"),
                "--data-dir",
                str(tmp_path / "r"),
                "--id",
                "x",
                "--listen",
                "127.0.0.1:9",
            ],
            "no such file",
        ),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1 and err.startswith("phalanx-aio: error:"), err
    assert not (tmp_path / "r").exists()  # nothing was created by a refused restore


def _flip_bytes_in_last_page(path: pathlib.Path) -> None:
    raw = bytearray(path.read_bytes())
    for i in range(len(raw) - 600, len(raw) - 500):
        raw[i] ^= 0x5A
    path.write_bytes(bytes(raw))


def _truncate(path: pathlib.Path) -> None:
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) - 4096 - 100])


def _not_a_store(path: pathlib.Path) -> None:
    conn = sqlite3.connect(path.with_name("foreign.db"))
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    path.write_bytes(path.with_name("foreign.db").read_bytes())


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (_flip_bytes_in_last_page, "corrupt"),
        (_truncate, "truncated"),
        (_not_a_store, "not a phalanx_aio store"),
    ],
)
def test_damaged_backup_is_refused(
    damage: object,
    message: str,
    backup_file: pathlib.Path,
    tmp_path: pathlib.Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert callable(damage)
    damage(backup_file)
    before = backup_file.read_bytes()
    dest = tmp_path / "r"
    argv = [
        "restore",
        "--from",
        str(backup_file),
        "--data-dir",
        str(dest),
        "--id",
        "x",
        "--listen",
        "127.0.0.1:9",
    ]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"phalanx-aio restore: {backup_file}: ") and message in err, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (dest / "x.db").exists()
    assert backup_file.read_bytes() == before  # the user's file is never modified


def test_backup_of_a_damaged_store_leaves_nothing(
    backup_file: pathlib.Path, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "damaged"
    data.mkdir()
    store = data / "n1.db"
    store.write_bytes(backup_file.read_bytes())
    _flip_bytes_in_last_page(store)
    out = tmp_path / "copy.db"
    assert main(["backup", "--data-dir", str(data), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"phalanx-aio backup: {out}: ") and "corrupt" in err, err
    assert not out.exists() and not list(tmp_path.glob("copy.db*"))


def test_restore_api_refuses_the_old_cluster_id(backup_file: pathlib.Path, tmp_path: pathlib.Path) -> None:
    with pytest.raises(ConfigError, match="must not share an id"):
        asyncio.run(restore_store(backup_file, tmp_path / "r", node_id="n1", address="h:1", cluster_id="old"))
    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")
    with pytest.raises(StorageError, match=r"empty\.db: the file is empty"):
        asyncio.run(restore_store(empty, tmp_path / "r", node_id="n1", address="h:1"))
