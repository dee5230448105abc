"""A durable store in one SQLite database (WAL journal), driven through aiosqlite.

Layout (schema version 2). Each table but ``entry_batches`` holds exactly one row (``k = 1``);
every row carries a CRC-32 of its canonical encoding (see ``_codec``)::

    identity(k, schema_version, node_id, cluster_id, crc)
    hard_state(k, term, vote, commit_index, crc)
    snapshot(k, idx, term, conf, data, crc)       -- idx 0: no snapshot yet
    entry_batches(first PRIMARY KEY, last, data, crc)

A row of ``entry_batches`` holds the log entries ``first .. last`` (at most 1,024) packed in
the layout the transport sends (``_entry_batch``): one row per write rather than one per
entry. Schema version 1 (one row per entry in a table ``entries``) is converted when opened.

The database header carries ``application_id`` 0x50484C58 ("PHLX") and ``user_version`` (the
schema version), so a foreign or future file is recognised before anything is read.

Every write is one SQLite transaction (``BEGIN IMMEDIATE`` .. ``COMMIT``) run as a single
call on aiosqlite's worker thread: one thread hop per ``Ready``, whatever it holds.
"""

from __future__ import annotations

import os
import pathlib
import sqlite3
import sys
from collections.abc import Callable, Sequence
from typing import Literal, TypeVar

import aiosqlite

from phalanx_aio._entry_batch import EncodeError
from phalanx_aio.core.types import Entry, HardState, InitialState, Snapshot
from phalanx_aio.errors import ConfigError, LocalError, StorageError
from phalanx_aio.storage._aiosqlite import daemonize, run_on_thread
from phalanx_aio.storage._codec import (
    batch_rows,
    hard_state_row,
)
from phalanx_aio.storage._loaders import (
    batch_entries,
    gc_paused,
    load_batches,
    load_entry_rows,
    load_hard_state,
    load_snapshot,
)
from phalanx_aio.storage.base import (
    LogShape,
    Storage,
    StoredState,
    check_ids,
    check_loaded_log,
    closed_error,
)
from phalanx_aio.storage.schema import (
    APPLICATION_ID,
    INSERT_BATCH,
    PUT_HARD_STATE,
    PUT_SNAPSHOT,
    SCHEMA_VERSION,
    check_header,
    check_identity,
    create_store,
    describe,
    pragmas,
    snapshot_row,
    upgrade_store,
)

if sys.platform != "win32":
    import fcntl

__all__ = ["APPLICATION_ID", "SCHEMA_VERSION", "SQLiteStorage"]

ROW_ENTRIES = 1024
"""The most log entries one row of ``entry_batches`` holds."""
_SQLITE_FULL = 13
_SQLITE_TOOBIG = 18
_MAX_PAGES = 0xFFFFFFFE  # SQLite's own ceiling; asking for more is clamped
_T = TypeVar("_T")


class SQLiteStorage(Storage):
    """A :class:`Storage` in one SQLite database file (plus its ``-wal`` and ``-shm`` files).

    ``synchronous="FULL"`` (the default) fsyncs the write-ahead log at every commit: a write
    that returned survives power loss. ``synchronous="NORMAL"`` skips that fsync (the log is
    synced at checkpoints only): a process crash still loses nothing, but a power loss or kernel
    crash may lose the last writes that returned, which can make this node forget a vote or
    an acknowledged entry. Use it only where the whole cluster losing power at once is ruled out
    and a node that lost data is rebuilt, or for tests.

    ``max_pages`` caps the database size in pages (``PRAGMA max_page_count``); reaching it
    behaves like a full disk (see :attr:`healthy`); :meth:`set_max_pages` changes it.

    ``quick_check`` runs SQLite's ``PRAGMA quick_check`` at open (reads every page once).

    The file is locked (``flock``) while open: a second store on the same file, in this process
    or another, fails to open. I/O errors other than a full disk (a failed fsync, corruption
    found while running) are fatal: every later write raises until the store is reopened,
    which verifies everything again.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        synchronous: Literal["FULL", "NORMAL"] = "FULL",
        max_pages: int | None = None,
        quick_check: bool = True,
    ) -> None:
        if synchronous not in ("FULL", "NORMAL"):
            raise ConfigError(f"synchronous must be 'FULL' or 'NORMAL', not {synchronous!r}")
        if max_pages is not None and max_pages < 1:
            raise ConfigError(f"max_pages must be a positive number of pages, not {max_pages!r}")
        self._path = os.fspath(path)
        self._synchronous = synchronous
        self._max_pages = max_pages
        self._quick_check = quick_check
        self._db: aiosqlite.Connection | None = None
        self._raw: sqlite3.Connection | None = None
        self._lock_fd: int | None = None
        self._shape = LogShape()
        self._last_error: StorageError | None = None
        self._failed: StorageError | None = None

    # ------------------------------------------------------------------ properties

    @property
    def location(self) -> str:
        """The database file's path, as given."""
        return self._path

    @property
    def path(self) -> str:
        """The database file's path, as given."""
        return self._path

    @property
    def synchronous(self) -> str:
        """The durability mode: ``"FULL"`` or ``"NORMAL"``."""
        return self._synchronous

    @property
    def healthy(self) -> bool:
        """False after a write failed (disk full until a write succeeds; other errors for good)."""
        return self._last_error is None and self._failed is None

    @property
    def last_error(self) -> StorageError | None:
        """The error that made the store unhealthy, or None."""
        return self._failed or self._last_error

    @property
    def failed(self) -> bool:
        """True after an I/O error other than a full disk, or damage found while running."""
        return self._failed is not None

    # ------------------------------------------------------------------ open / close

    async def open(self, *, node_id: str, cluster_id: str) -> StoredState:
        """Verify and load the store, creating it if the file does not exist.

        Verification runs on a read-only connection before anything is written: the header
        (SQLite magic, WAL mode, application id, schema version, truncation), SQLite's quick
        check, the identity, every checksum and the shape of the log. A file that fails
        raises :class:`StorageError` naming the file and the problem and is left unchanged.
        A verified store of schema version 1 is then converted to the current layout in one
        transaction (if that fails, it raises and the file is unchanged).
        """
        check_ids(node_id, cluster_id)
        if self._db is not None:
            raise LocalError(f"{self._path}: the store is already open")
        loaded: list[StoredState] = []
        failed: list[BaseException] = []

        def connector() -> sqlite3.Connection:
            try:
                conn, stored = self._open_sync(node_id, cluster_id)
            except Exception as exc:
                # Let aiosqlite start normally on a stand-in so that its thread is shut down
                # cleanly below (a failing connector leaves it stopping after the loop is gone).
                failed.append(exc)
                return sqlite3.connect(":memory:")
            loaded.append(stored)
            return conn

        db = aiosqlite.Connection(connector, 64)
        # A store that is never closed must not keep the interpreter alive at exit. Ending the
        # thread there is no worse than a crash, which the store is built to survive.
        daemonize(db)
        await db
        if failed:
            await db.close()
            raise failed[0]
        self._db = db
        self._last_error = None
        self._failed = None
        return loaded[0]

    async def aclose(self) -> None:
        """Close the database (checkpointing the WAL) and release the file lock. Idempotent."""
        db, self._db = self._db, None
        if db is None:
            return
        try:
            await db.close()
        except sqlite3.Error as exc:
            raise StorageError(f"{self._path}: closing the database failed: {exc}") from exc
        finally:
            self._raw = None
            self._unlock()

    def _open_sync(self, node_id: str, cluster_id: str) -> tuple[sqlite3.Connection, StoredState]:
        path = self._path
        created = False
        try:
            if not os.path.lexists(path):
                create_store(path, node_id, cluster_id)
                created = True
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError as exc:
            raise StorageError(f"{path}: cannot open the store: {exc.strerror or exc}") from exc
        try:
            self._lock(fd)
            version = check_header(path, fd)
            state, shape = self._verify_sync(node_id, cluster_id, version)
            conn = self._connect_rw()
            if version != SCHEMA_VERSION:
                upgrade_store(path, conn, node_id, cluster_id, state.entries, ROW_ENTRIES)
        except BaseException:
            os.close(fd)
            self._lock_fd = None
            raise
        self._raw = conn
        self._shape = shape
        return conn, StoredState(node_id, cluster_id, state, created)

    def _lock(self, fd: int) -> None:
        self._lock_fd = fd
        if sys.platform != "win32":
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as exc:
                raise StorageError(
                    f"{self._path}: the store is in use (open in another process or another SQLiteStorage)"
                ) from exc

    def _unlock(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)  # closing the descriptor releases the flock

    def _verify_sync(self, node_id: str, cluster_id: str, version: int) -> tuple[InitialState, LogShape]:
        """Read and check everything on a read-only connection (it never writes the file).

        ``version`` is the schema version in the header: the identity row must say the same,
        and the log is read in that version's layout.
        """
        path = self._path
        uri = pathlib.Path(path).resolve().as_uri() + "?mode=ro"
        try:
            conn = sqlite3.connect(uri, uri=True, isolation_level=None)
            conn.text_factory = bytes  # damaged text must not escape as a decoding error
            try:
                conn.execute("BEGIN")  # one read transaction: everything from one point in time
                if self._quick_check:
                    rows = conn.execute("PRAGMA quick_check(5)").fetchall()
                    problems = [bytes(r[0]).decode("utf-8", "replace") for r in rows]
                    if problems != ["ok"]:
                        raise StorageError(
                            f"{path}: the database is corrupt (SQLite quick_check: {'; '.join(problems)})"
                        )
                check_identity(path, conn, node_id, cluster_id, version)
                hard_state = load_hard_state(path, conn)
                snapshot = load_snapshot(path, conn)
                with gc_paused():
                    if version == 1:
                        entries = load_entry_rows(path, conn)
                    else:
                        entries = load_batches(path, conn, snapshot.meta.index)
                conn.execute("COMMIT")
            finally:
                conn.close()
        except sqlite3.Error as exc:
            raise StorageError(f"{path}: {describe(exc)}") from exc
        except ValueError as exc:  # e.g. a value SQLite cannot convert: damage it did not notice
            raise StorageError(f"{path}: the database is corrupt ({exc})") from exc
        shape = check_loaded_log(path, hard_state, snapshot, entries)
        return InitialState(hard_state, snapshot, tuple(entries)), shape

    def _connect_rw(self) -> sqlite3.Connection:
        path = self._path
        try:
            conn = sqlite3.connect(path, isolation_level=None)
            try:
                mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                if mode != "wal":
                    raise StorageError(f"{path}: SQLite refused WAL journal mode (got {mode!r})")
                for pragma in pragmas(self._synchronous):
                    conn.execute(pragma)
                if self._max_pages is not None:
                    conn.execute(f"PRAGMA max_page_count={int(self._max_pages)}")
            except BaseException:
                conn.close()
                raise
        except sqlite3.Error as exc:
            raise StorageError(f"{path}: {describe(exc)}") from exc
        except ValueError as exc:  # an undecodable error message from a damaged schema
            raise StorageError(f"{path}: the database is corrupt ({exc})") from exc
        return conn

    # ------------------------------------------------------------------ writes

    async def _call(self, fn: Callable[[], _T]) -> _T:
        """Run ``fn`` on the connection's worker thread: one hop, however much it does."""
        db = self._db
        if db is None:
            raise closed_error(self._path)
        return await run_on_thread(db, fn)

    async def save(
        self,
        *,
        hard_state: HardState | None = None,
        entries: Sequence[Entry] = (),
        snapshot: Snapshot | None = None,
    ) -> None:
        """Persist one ``Ready`` in one transaction and one thread hop (see :meth:`Storage.save`)."""
        if hard_state is None and not entries and snapshot is None:
            if self._db is None:
                raise closed_error(self._path)
            return
        await self._call(lambda: self._save_sync(hard_state, entries, snapshot))

    def _save_sync(
        self, hard_state: HardState | None, entries: Sequence[Entry], snapshot: Snapshot | None
    ) -> None:
        conn = self._writable()
        shape, delete_from = self._shape.plan_save(self._path, hard_state, entries, snapshot, self._term_at)
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                if snapshot is not None:
                    conn.execute("DELETE FROM entry_batches")
                    conn.execute(PUT_SNAPSHOT, snapshot_row(snapshot))
                if entries:
                    if delete_from is not None:
                        self._truncate(conn, delete_from)
                    conn.executemany(INSERT_BATCH, batch_rows(entries, ROW_ENTRIES, self.batch_cache))
                if hard_state is not None:
                    conn.execute(PUT_HARD_STATE, hard_state_row(hard_state))
                conn.execute("COMMIT")
            except BaseException:
                self._rollback(conn)
                raise
        except sqlite3.Error as exc:
            raise self._write_failed("saving", exc) from exc
        except EncodeError as exc:
            raise LocalError(f"{self._path}: cannot store the entries: {exc}") from exc
        self._shape = shape
        self._last_error = None

    async def save_snapshot(self, snapshot: Snapshot) -> None:
        """Store a local snapshot and delete the entries it covers, in one transaction."""
        await self._call(lambda: self._save_snapshot_sync(snapshot))

    def _save_snapshot_sync(self, snapshot: Snapshot) -> None:
        conn = self._writable()
        shape = self._shape.plan_compact(self._path, snapshot, self._term_at)
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute(PUT_SNAPSHOT, snapshot_row(snapshot))
                # A row that straddles the snapshot's index stays whole; loading skips the entries
                # it holds up to the snapshot, and the next compaction deletes it.
                conn.execute("DELETE FROM entry_batches WHERE last <= ?", (snapshot.meta.index,))
                conn.execute("COMMIT")
            except BaseException:
                self._rollback(conn)
                raise
        except sqlite3.Error as exc:
            raise self._write_failed("saving a snapshot", exc) from exc
        self._shape = shape
        self._last_error = None

    async def read_snapshot(self) -> Snapshot | None:
        """The stored snapshot (checksum verified), or None if there is none."""
        return await self._call(self._read_snapshot_sync)

    def _read_snapshot_sync(self) -> Snapshot | None:
        conn = self._connection()
        try:
            snap = load_snapshot(self._path, conn)
        except sqlite3.Error as exc:
            raise self._write_failed("reading the snapshot", exc) from exc
        except StorageError as exc:
            self._failed = exc
            raise
        return snap if snap.meta.index > 0 else None

    async def set_max_pages(self, pages: int | None) -> int:
        """Change the size cap (None: no cap beyond SQLite's own); returns the cap in force.

        SQLite never sets the cap below the current size of the database.
        """
        if pages is not None and pages < 1:
            raise ConfigError(f"max_pages must be a positive number of pages, not {pages!r}")
        self._max_pages = pages
        limit = _MAX_PAGES if pages is None else int(pages)

        def apply() -> int:
            row = self._connection().execute(f"PRAGMA max_page_count={limit}").fetchone()
            return int(row[0])

        return await self._call(apply)

    # ------------------------------------------------------------------ helpers (worker thread)

    def _connection(self) -> sqlite3.Connection:
        if self._raw is None:
            raise closed_error(self._path)
        return self._raw

    def _writable(self) -> sqlite3.Connection:
        conn = self._connection()
        if self._failed is not None:
            raise StorageError(
                f"{self._path}: the store failed earlier and refuses writes until it is reopened "
                f"({self._failed})"
            )
        return conn

    def _term_at(self, index: int) -> int:
        first, row = self._row_holding(self._connection(), index)
        return row[index - first].term

    def _row_holding(self, conn: sqlite3.Connection, index: int) -> tuple[int, tuple[Entry, ...]]:
        """The first index and the entries of the row that holds ``index`` (checked)."""
        row = conn.execute(
            "SELECT first, last, data, crc FROM entry_batches WHERE first <= ? ORDER BY first DESC LIMIT 1",
            (index,),
        ).fetchone()
        if row is None or not isinstance(row[1], int) or row[1] < index:
            err = StorageError(f"{self._path}: log entry {index} has disappeared from the database")
            self._failed = err
            raise err
        return row[0], self._checked_row(row)

    def _checked_row(self, row: tuple[object, ...]) -> tuple[Entry, ...]:
        """The entries of a row read while running; damage found makes the store fail."""
        first, last, data, crc = row
        try:
            return batch_entries(self._path, first, last, data, crc)
        except StorageError as err:
            self._failed = err
            raise

    def _truncate(self, conn: sqlite3.Connection, index: int) -> None:
        """Delete the stored entries from ``index`` on (in the open transaction); a row that
        holds entries on both sides is rewritten with the ones before ``index``."""
        straddling = conn.execute(
            "SELECT first, last, data, crc FROM entry_batches WHERE first < ? AND last >= ?", (index, index)
        ).fetchone()
        if straddling is not None:
            first = straddling[0]
            kept = self._checked_row(straddling)[: index - first]
            conn.execute("DELETE FROM entry_batches WHERE first >= ?", (first,))
            conn.executemany(INSERT_BATCH, batch_rows(kept, ROW_ENTRIES))
        else:
            conn.execute("DELETE FROM entry_batches WHERE first >= ?", (index,))

    def _rollback(self, conn: sqlite3.Connection) -> None:
        if not conn.in_transaction:
            return  # SQLite already rolled the transaction back (it may after SQLITE_FULL)
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error as exc:
            self._failed = StorageError(f"{self._path}: rolling back a failed write failed: {exc}")

    def _write_failed(self, what: str, exc: sqlite3.Error) -> StorageError:
        code = getattr(exc, "sqlite_errorcode", None)
        primary = code & 0xFF if isinstance(code, int) else None
        if primary == _SQLITE_FULL:
            err = StorageError(
                f"{self._path}: disk full while {what} ({exc}); nothing was written, and writes "
                "resume once there is space"
            )
            self._last_error = err
        elif primary == _SQLITE_TOOBIG:
            err = StorageError(f"{self._path}: {what} failed: a value is too big for SQLite ({exc})")
        else:
            err = StorageError(
                f"{self._path}: {what} failed: {describe(exc)}; the store refuses writes until it is reopened"
            )
            self._failed = err
        return err
