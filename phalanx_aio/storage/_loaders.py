"""Loading a store's state at open: every row read is checked against its checksum (and the log
rows against the indexes they claim) before anything is returned (private)."""

from __future__ import annotations

import contextlib
import gc
import sqlite3
import struct
from collections.abc import Iterator

from phalanx_aio.core.types import ConfState, Entry, EntryType, HardState, Snapshot, SnapshotMeta
from phalanx_aio.errors import ProtocolError, StorageError
from phalanx_aio.storage._codec import (
    batch_crc,
    decode_batch,
    decode_conf_state,
    entry_crc,
    entry_crcs,
    hard_state_crc,
    snapshot_crc,
)
from phalanx_aio.storage.schema import one_row, text_column

_ENTRY_TYPES = {int(t): t for t in EntryType}
_LOAD_CHUNK = 65_536  # schema 1 rows (one entry each) read and checked at a time
_LOAD_BATCHES = 64  # entry_batches rows read at a time


def load_hard_state(path: str, conn: sqlite3.Connection) -> HardState:
    term, raw_vote, commit, crc = one_row(path, conn, "hard_state", "term, vote, commit_index, crc")
    vote = None if raw_vote is None else text_column(raw_vote)
    if (
        not (isinstance(term, int) and isinstance(commit, int) and (raw_vote is None or vote is not None))
        or term < 0
        or commit < 0
        or crc != hard_state_crc(term, vote, commit)
    ):
        raise StorageError(f"{path}: the hard state row fails its checksum (corrupt)")
    return HardState(term, vote, commit)


def load_snapshot(path: str, conn: sqlite3.Connection) -> Snapshot:
    index, term, conf, data, crc = one_row(path, conn, "snapshot", "idx, term, conf, data, crc")
    if (
        not (isinstance(index, int) and isinstance(term, int) and isinstance(conf, bytes))
        or not isinstance(data, bytes)
        or index < 0
        or term < 0
        or crc != snapshot_crc(index, term, conf, data)
    ):
        raise StorageError(f"{path}: the snapshot row fails its checksum (corrupt snapshot or metadata)")
    try:
        conf_state = decode_conf_state(conf) if index > 0 else ConfState()
    except ValueError as exc:
        raise StorageError(f"{path}: the snapshot's configuration is malformed: {exc}") from exc
    return Snapshot(SnapshotMeta(index, term, conf_state), data)


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while the log is loaded (a million new objects
    would otherwise trigger many collections that find nothing); restore it as it was."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def load_batches(path: str, conn: sqlite3.Connection, snap_index: int) -> list[Entry]:
    """Every stored entry after the snapshot (``snap_index``), each row checked against its
    checksum and its claimed indexes before its entries are returned.

    The first row may hold entries up to the snapshot's index as well (compaction deletes
    whole rows only): those are skipped. Entries of one term share one ``int`` for it.
    """
    entries: list[Entry] = []
    terms: dict[int, int] = {}
    cursor = conn.execute("SELECT first, last, data, crc FROM entry_batches ORDER BY first")
    while rows := cursor.fetchmany(_LOAD_BATCHES):
        for first, last, data, crc in rows:
            batch = batch_entries(path, first, last, data, crc, terms)
            if not entries and first <= snap_index < last:
                batch = batch[snap_index - first + 1 :]
            entries += batch
    return entries


def batch_entries(
    path: str, first: object, last: object, data: object, crc: object, terms: dict[int, int] | None = None
) -> tuple[Entry, ...]:
    """The entries of one ``entry_batches`` row, or :class:`StorageError` if it fails a check."""
    if not (type(first) is int and type(last) is int and type(data) is bytes):
        raise StorageError(
            f"{path}: the row of log entries {first!r}..{last!r} has damaged columns (corrupt row)"
        )
    try:
        ok = crc == batch_crc(first, last, data)
    except (struct.error, OverflowError):
        ok = False
    if not ok:
        raise StorageError(f"{path}: log entries {first}..{last} fail their checksum (corrupt row)")
    try:
        return decode_batch(data, first, last, terms)
    except (ProtocolError, ValueError) as exc:
        raise StorageError(f"{path}: log entries {first}..{last} are malformed: {exc}") from exc


def load_entry_rows(path: str, conn: sqlite3.Connection) -> list[Entry]:
    """Every entry of a schema 1 store (one row per entry), each checked against its checksum
    before it is returned.

    Rows are read and checked in chunks, column by column (``map`` over C functions rather than
    Python code per row). A chunk that fails the bulk check is checked again row by row, so that the
    error names the first bad entry; no entry of a failing chunk is returned.
    """
    entries: list[Entry] = []
    terms: dict[int, int] = {}
    cursor = conn.execute("SELECT idx, term, type, data, crc FROM entries ORDER BY idx")
    while rows := cursor.fetchmany(_LOAD_CHUNK):
        entries += _checked_entries(path, rows, terms)
    return entries


def _checked_entries(path: str, rows: list[tuple[object, ...]], terms_seen: dict[int, int]) -> list[Entry]:
    """The entries of ``rows`` once all of them passed their checks.

    Entries of one term share one ``int`` object for it (``terms_seen``): SQLite hands out a
    new one per row, which costs 32 bytes per entry once terms pass 256.
    """
    try:
        idx, terms, types, datas, crcs = zip(*rows, strict=True)
        kinds = list(map(_ENTRY_TYPES.get, types))
        ok = entry_crcs(idx, terms, types, datas) == list(crcs) and None not in kinds
    except (TypeError, ValueError, struct.error, OverflowError):
        ok = False
    if not ok:
        _check_rows_one_by_one(path, rows)
        raise StorageError(f"{path}: a log entry fails its checksum (corrupt row)")  # not reached
    shared_terms = map(terms_seen.setdefault, terms, terms)
    return list(map(Entry, shared_terms, idx, kinds, datas))  # type: ignore[arg-type]


def _check_rows_one_by_one(path: str, rows: list[tuple[object, ...]]) -> None:
    """Raise :class:`StorageError` naming the first row that fails its checks."""
    types = _ENTRY_TYPES
    for index, term, type_, data, crc in rows:
        try:
            ok = type(data) is bytes and crc == entry_crc(index, term, type_, data)  # type: ignore[arg-type]
        except (TypeError, struct.error, OverflowError):
            ok = False
        if not ok:
            raise StorageError(f"{path}: log entry {index} fails its checksum (corrupt row)")
        if types.get(type_) is None:  # type: ignore[call-overload]
            raise StorageError(f"{path}: log entry {index} has an unknown type {type_!r}")
