"""``phalanx-aio backup`` and ``phalanx-aio restore``.

``backup`` copies a node's SQLite store while the node runs, with SQLite's online backup API
(one read transaction, so the copy is one consistent point in time even under WAL writes), then
verifies the copy with every check :class:`~phalanx_aio.storage.SQLiteStorage` runs at open
before moving it into place.

``restore`` seeds a *new* single-member cluster from a backup: it replays the backup's snapshot
and committed entries into the KV state machine and writes a store whose only content is a
snapshot of that state, owned by the new node, with a configuration of that node alone. It never
recreates a member of the old cluster: a backup holds an old term and vote, and a member
rolled back to them could vote twice in one term (see ``docs/operations.md``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import pathlib
import sqlite3
import sys
import tempfile
from dataclasses import dataclass

from phalanx_aio._fs import fsync_dir
from phalanx_aio._grpc import parse_address
from phalanx_aio.core.types import ConfState, EntryType, HardState, Snapshot, SnapshotMeta
from phalanx_aio.errors import ConfigError, StorageError
from phalanx_aio.node.state_machine import StateMachine

__all__ = [
    "BackupResult",
    "RestoreResult",
    "add_backup_parsers",
    "backup_store",
    "find_store",
    "restore_store",
    "run_backup_command",
]


@dataclass(frozen=True, slots=True)
class BackupResult:
    """What :func:`backup_store` copied."""

    path: pathlib.Path
    """The verified backup file."""
    node_id: str
    """The node whose store was copied."""
    cluster_id: str
    """The cluster that node belongs to."""
    term: int
    """The node's term at the moment of the copy."""
    commit: int
    """The node's commit index at the moment of the copy (what a restore replays up to)."""
    snapshot_index: int
    """The last index covered by the store's snapshot (0: none)."""
    entries: int
    """How many log entries follow the snapshot."""
    size: int
    """The backup's size in bytes."""


@dataclass(frozen=True, slots=True)
class RestoreResult:
    """What :func:`restore_store` wrote."""

    path: pathlib.Path
    """The new node's store."""
    node_id: str
    """The new node's id."""
    cluster_id: str
    """The new cluster's id."""
    index: int
    """The log index the restored state corresponds to (the backup's commit index)."""
    term: int
    """The term of that entry."""
    source_node: str
    """The node the backup was taken from."""
    source_cluster: str
    """The cluster the backup was taken from."""


def find_store(data_dir: pathlib.Path, node_id: str | None) -> pathlib.Path:
    """The store file of ``node_id`` (or the only store) in a ``serve`` data directory.

    Raises :class:`ConfigError` if the directory holds no store, or several and no id is given.
    """
    if not data_dir.is_dir():
        raise ConfigError(f"--data-dir {data_dir}: not a directory")
    if node_id is not None:
        path = data_dir / f"{node_id}.db"
        if not path.is_file():
            raise ConfigError(f"--data-dir {data_dir}: no store for node {node_id!r} ({path.name})")
        return path
    stores = sorted(p for p in data_dir.glob("*.db") if p.is_file())
    if not stores:
        raise ConfigError(f"--data-dir {data_dir}: no store (*.db) found")
    if len(stores) > 1:
        names = ", ".join(p.name for p in stores)
        raise ConfigError(f"--data-dir {data_dir}: several stores ({names}); choose one with --id")
    return stores[0]


def _read_identity(path: pathlib.Path) -> tuple[str, str]:
    """The (node id, cluster id) recorded in a store, without trusting anything else in it."""
    # The store's own header checks first (magic, application id, schema version, truncation),
    # so that a damaged file gets the same precise message as at open.
    from phalanx_aio.storage.schema import check_header

    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise StorageError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    try:
        check_header(str(path), fd)
    finally:
        os.close(fd)
    uri = path.resolve().as_uri() + "?mode=ro&immutable=1"
    try:
        conn = sqlite3.connect(uri, uri=True)
        try:
            row = conn.execute("SELECT node_id, cluster_id FROM identity").fetchone()
        finally:
            conn.close()
    except (sqlite3.Error, ValueError) as exc:
        raise StorageError(f"{path}: cannot read the store's identity (corrupt?): {exc}") from exc
    if row is None or not isinstance(row[0], str) or not isinstance(row[1], str):
        raise StorageError(f"{path}: the store's identity row is missing or damaged")
    return row[0], row[1]


def _copy_online(source: pathlib.Path, dest: pathlib.Path) -> None:
    """Copy ``source`` to ``dest`` with SQLite's backup API in one step (one read transaction)."""
    try:
        src = sqlite3.connect(f"{source.resolve().as_uri()}?mode=ro", uri=True, timeout=30.0)
        try:
            dst = sqlite3.connect(dest, timeout=30.0)
            try:
                src.backup(dst)  # pages=-1: every page in one step, from one read snapshot
            finally:
                dst.close()
        finally:
            src.close()
        fd = os.open(dest, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except sqlite3.Error as exc:
        raise StorageError(f"{source}: the online copy failed: {exc}") from exc
    except OSError as exc:
        raise StorageError(f"{dest}: cannot write the copy: {exc.strerror or exc}") from exc


def _remove_with_sidecars(path: pathlib.Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        p = path.with_name(path.name + suffix)
        if p.exists():
            p.unlink()


async def _verify(path: pathlib.Path, shown: pathlib.Path) -> tuple[str, str, object]:
    """Open ``path`` as a store (every check of :meth:`SQLiteStorage.open`) and close it again.

    Errors name ``shown`` instead of ``path``. Returns (node id, cluster id, the StoredState).
    """
    from phalanx_aio.storage import SQLiteStorage

    try:
        node_id, cluster_id = _read_identity(path)
        store = SQLiteStorage(path)
        try:
            stored = await store.open(node_id=node_id, cluster_id=cluster_id)
        finally:
            await store.aclose()
    except StorageError as exc:
        raise StorageError(str(exc).replace(str(path), str(shown))) from exc
    wal = path.with_name(path.name + "-wal")
    if wal.exists() and wal.stat().st_size > 0:
        raise StorageError(f"{shown}: the verified copy was not fully checkpointed")
    for suffix in ("-wal", "-shm"):
        side = path.with_name(path.name + suffix)
        if side.exists():
            side.unlink()
    return node_id, cluster_id, stored


async def backup_store(source: pathlib.Path, out: pathlib.Path) -> BackupResult:
    """Copy the store at ``source`` (open in a running node or not) to ``out``, verified.

    ``out`` must not exist. The copy is written beside it under a temporary name, verified with
    every check :meth:`SQLiteStorage.open` runs, then renamed into place; on any failure
    nothing is left at ``out``. Raises :class:`StorageError` (a copy or verification failure)
    or :class:`ConfigError` (``out`` exists, or its directory does not).
    """
    if out.exists():
        raise ConfigError(f"--out {out}: already exists; refusing to overwrite it")
    if not out.parent.is_dir():
        raise ConfigError(f"--out {out}: directory {out.parent} does not exist")
    partial = out.with_name(out.name + ".partial")
    _remove_with_sidecars(partial)
    try:
        await asyncio.to_thread(_copy_online, source, partial)
        node_id, cluster_id, stored = await _verify(partial, out)
        os.rename(partial, out)
        fsync_dir(out.parent)
    except BaseException:
        _remove_with_sidecars(partial)
        raise
    from phalanx_aio.storage import StoredState

    assert isinstance(stored, StoredState)
    state = stored.state
    return BackupResult(
        path=out,
        node_id=node_id,
        cluster_id=cluster_id,
        term=state.hard_state.term,
        commit=state.hard_state.commit,
        snapshot_index=state.snapshot.meta.index,
        entries=len(state.entries),
        size=out.stat().st_size,
    )


def _replay(stored_state: object, state_machine: StateMachine) -> tuple[int, int]:
    """Restore the snapshot and apply the committed entries; return (index, term) reached."""
    from phalanx_aio.core.types import InitialState
    from phalanx_aio.node import command_of

    assert isinstance(stored_state, InitialState)
    snap = stored_state.snapshot
    index, term = snap.meta.index, snap.meta.term
    if index > 0:
        state_machine.restore(snap.data)
    for e in stored_state.entries:
        if e.index > stored_state.hard_state.commit:
            break
        if e.type is EntryType.NORMAL:
            command = command_of(e.data)
            # RaftNode logs and skips a command its state machine rejects; replay does the same.
            with contextlib.suppress(Exception):
                state_machine.apply(command)
        index, term = e.index, e.term
    return index, term


async def restore_store(
    backup: pathlib.Path,
    data_dir: pathlib.Path,
    *,
    node_id: str,
    address: str,
    cluster_id: str | None = None,
    state_machine: StateMachine | None = None,
) -> RestoreResult:
    """Seed a new single-member cluster in ``data_dir`` from a backup made by :func:`backup_store`.

    The backup is verified, its snapshot and committed entries are replayed into
    ``state_machine`` (a fresh :class:`~phalanx_aio.kv.KVStateMachine` by default), and a
    store ``data_dir/<node_id>.db`` is written holding only a snapshot of the result, whose
    configuration is ``node_id`` alone at ``address``. ``cluster_id`` defaults to the backup's
    cluster id with ``-restored`` appended and must differ from it: a restored node must never
    talk to the old cluster. Raises :class:`ConfigError` (bad arguments, an existing store)
    or :class:`StorageError` (a damaged backup, a failed write).
    """
    from phalanx_aio.storage import SQLiteStorage, StoredState

    if not backup.is_file():
        raise ConfigError(f"--from {backup}: no such file")
    if not node_id:
        raise ConfigError("--id must not be empty")
    dest = data_dir / f"{node_id}.db"
    if dest.exists():
        raise ConfigError(
            f"--data-dir {data_dir}: already holds a store for {node_id!r}; restore needs a new one"
        )
    if state_machine is None:
        from phalanx_aio.kv.state_machine import KVStateMachine

        state_machine = KVStateMachine()
    with tempfile.TemporaryDirectory(prefix="phalanx-restore-") as tmp:
        # Verify a private copy: opening a store creates -wal/-shm beside it, and the user's
        # backup may sit on read-only media.
        copy = pathlib.Path(tmp) / "backup.db"
        try:
            await asyncio.to_thread(_copy_file, backup, copy)
        except OSError as exc:
            raise StorageError(f"{backup}: cannot read: {exc.strerror or exc}") from exc
        src_node, src_cluster, stored = await _verify(copy, backup)
    assert isinstance(stored, StoredState)
    new_cluster = cluster_id if cluster_id is not None else f"{src_cluster}-restored"
    if not new_cluster:
        raise ConfigError("--cluster-id must not be empty")
    if new_cluster == src_cluster:
        raise ConfigError(
            f"--cluster-id {new_cluster!r} is the backup's own cluster: a restore seeds a NEW cluster and "
            "must not share an id with the old one (its members could vote twice in a term)"
        )
    try:
        index, term = _replay(stored.state, state_machine)
        data = state_machine.snapshot()
    except Exception as exc:
        raise StorageError(f"{backup}: the backup's state cannot be replayed: {exc}") from exc
    if index == 0:
        raise StorageError(f"{backup}: the backup holds no committed state to restore")
    conf = ConfState(voters=frozenset({node_id}), contexts=((node_id, address.encode()),))
    snapshot = Snapshot(SnapshotMeta(index, term, conf), data)
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--data-dir {data_dir}: {exc.strerror or exc}") from exc
    building = data_dir / f"{node_id}.db.restoring"
    _remove_with_sidecars(building)
    try:
        store = SQLiteStorage(building)
        await store.open(node_id=node_id, cluster_id=new_cluster)
        try:
            await store.save(hard_state=HardState(term, None, index), snapshot=snapshot)
        finally:
            await store.aclose()
        await _verify(building, dest)
        os.rename(building, dest)
        fsync_dir(data_dir)
    except BaseException:
        _remove_with_sidecars(building)
        raise
    return RestoreResult(dest, node_id, new_cluster, index, term, src_node, src_cluster)


def _copy_file(src: pathlib.Path, dst: pathlib.Path) -> None:
    with src.open("rb") as fin, dst.open("wb") as fout:
        while chunk := fin.read(1 << 20):
            fout.write(chunk)


def _check_address(value: str) -> str:
    try:
        parse_address(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not HOST:PORT with a port in 1-65535 ({exc})"
        ) from None
    return value


def add_backup_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Declare the ``backup`` and ``restore`` subcommands."""
    b = sub.add_parser(
        "backup",
        help="copy a node's store, online and verified",
        description=(
            "Copy a node's SQLite store while the node runs (SQLite's online backup API: one "
            "consistent point in time), verify the copy with every check the store runs at open, "
            "then move it to --out."
        ),
    )
    b.add_argument("--data-dir", required=True, help="the node's data directory (as given to serve)")
    b.add_argument("--out", required=True, help="the backup file to write (must not exist)")
    b.add_argument("--id", default=None, help="the node whose store to copy (needed if DIR holds several)")

    r = sub.add_parser(
        "restore",
        help="seed a NEW single-member cluster from a backup",
        description=(
            "Replay a backup's snapshot and committed entries into a new store in --data-dir, owned "
            "by a new single-member cluster. Serve it with 'phalanx-aio serve', then grow it with "
            "'serve --join'. A backup is never restored into its old cluster."
        ),
    )
    r.add_argument("--from", dest="source", required=True, help="a backup made by 'phalanx-aio backup'")
    r.add_argument("--data-dir", required=True, help="a data directory with no store for --id")
    r.add_argument("--id", required=True, help="the new node's id")
    r.add_argument(
        "--listen", required=True, type=_check_address, help="HOST:PORT the new node will serve on"
    )
    r.add_argument(
        "--cluster-id",
        default=None,
        help="the new cluster's id (default: the backup's with '-restored'); must differ from the backup's",
    )


def run_backup_command(args: argparse.Namespace) -> int:
    """Run ``backup`` or ``restore``; returns the exit status (1 on a storage failure).

    :class:`ConfigError` propagates (the caller prints it and exits 2).
    """
    from phalanx_aio.node import run

    try:
        if args.command == "backup":
            source = find_store(pathlib.Path(args.data_dir), args.id)
            b = run(backup_store(source, pathlib.Path(args.out)))
            print(
                f"backed up node {b.node_id} of cluster {b.cluster_id} to {b.path}: term {b.term}, "
                f"commit {b.commit}, snapshot at {b.snapshot_index}, {b.entries} entries, {b.size} bytes"
            )
            return 0
        res = run(
            restore_store(
                pathlib.Path(args.source),
                pathlib.Path(args.data_dir),
                node_id=args.id,
                address=args.listen,
                cluster_id=args.cluster_id,
            )
        )
    except StorageError as exc:
        one_line = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        print(f"phalanx-aio {args.command}: {one_line}", file=sys.stderr)
        return 1
    print(
        f"restored {res.source_node}'s backup (cluster {res.source_cluster}) up to index {res.index} into "
        f"{res.path}\nstart it with: phalanx-aio serve --id {res.node_id} --listen {args.listen} "
        f"--data-dir {args.data_dir} --cluster-id {res.cluster_id}"
    )
    return 0
