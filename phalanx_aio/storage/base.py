"""The storage interface the driver uses, and the log-shape rules every store enforces."""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

from phalanx_aio._entry_batch import BatchCache
from phalanx_aio.core.types import Entry, EntryType, HardState, InitialState, Snapshot
from phalanx_aio.errors import ClosedError, LocalError, StorageError

__all__ = ["LogShape", "Storage", "StoredState"]

_ENTRY_TYPES = frozenset(EntryType)


@dataclass(frozen=True, slots=True)
class StoredState:
    """What :meth:`Storage.open` returns: the store's identity and everything the core needs."""

    node_id: str
    """The node this store belongs to (recorded when it was created)."""
    cluster_id: str
    """The cluster this store belongs to (recorded when it was created)."""
    state: InitialState
    """Hard state, last snapshot (with its data) and the entries after it, for ``Raft(...)``."""
    created: bool
    """True if the store was empty and has just been initialised."""


class Storage(abc.ABC):
    """A node's durable state: identity, hard state, log entries and the last snapshot.

    One instance per node, used by one driver on one event loop. Every write is one atomic,
    durable transaction: when a write method returns, what it wrote survives a crash; when it
    raises, nothing of it was kept. Usable as ``async with store: ...`` (closes on exit).

    The store checks the shape of what it is given (see :class:`LogShape`) and raises
    :class:`~phalanx_aio.errors.LocalError` for a write that would leave a log it could not load
    again; :class:`~phalanx_aio.errors.StorageError` means the medium failed or holds data that
    cannot be trusted. After a disk-full failure :attr:`healthy` is False until a write succeeds.

    If the task awaiting a write is cancelled, the write may still complete.
    """

    batch_cache: BatchCache | None = None
    """The batch cache of the node that owns this store (set by ``RaftNode``, shared with its
    transport): a store that encodes entries in the wire's batch layout may reuse the batch
    the transport just encoded for the followers."""

    @property
    @abc.abstractmethod
    def location(self) -> str:
        """Where the data lives (a file path, or a name for an in-memory store); errors name it."""

    @property
    @abc.abstractmethod
    def healthy(self) -> bool:
        """False after a write failed for lack of space (or the store failed for good)."""

    @property
    @abc.abstractmethod
    def last_error(self) -> StorageError | None:
        """Why the store is unhealthy: the error of the last failed write (None when healthy)."""

    @property
    def failed(self) -> bool:
        """True after a failure that no later write can cure (an I/O error other than a full
        disk, or damage found while running): every write raises until the store is closed and
        opened again, which verifies everything. Implies ``not healthy``; do not retry writes."""
        return False

    @abc.abstractmethod
    async def open(self, *, node_id: str, cluster_id: str) -> StoredState:
        """Load everything, creating the store (recording both ids and the schema version) if new.

        An existing store is verified first: its schema version, both ids, every checksum and
        that the log fits its snapshot. Any problem raises
        :class:`~phalanx_aio.errors.StorageError` naming the location and what is wrong,
        and nothing is modified.
        """

    @abc.abstractmethod
    async def save(
        self,
        *,
        hard_state: HardState | None = None,
        entries: Sequence[Entry] = (),
        snapshot: Snapshot | None = None,
    ) -> None:
        """Persist one ``Ready`` in one atomic, durable transaction.

        In order: ``snapshot`` (received from the leader) replaces the whole stored log; then
        every stored entry at or after ``entries[0].index`` is deleted and ``entries`` are
        inserted; then ``hard_state`` replaces the stored one.
        """

    @abc.abstractmethod
    async def save_snapshot(self, snapshot: Snapshot) -> None:
        """Store a snapshot the application took and delete the entries it covers (compaction).

        Atomic: either the new snapshot and the shorter log, or neither.
        """

    @abc.abstractmethod
    async def read_snapshot(self) -> Snapshot | None:
        """The stored snapshot with its data (to send to a follower), or None if there is none."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Close the store. Idempotent; it may be opened again afterwards."""

    async def __aenter__(self) -> Self:
        """Return the store itself (call :meth:`open` inside the block)."""
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the store."""
        await self.aclose()


def check_ids(node_id: str, cluster_id: str) -> None:
    """Refuse empty or non-string ids before anything is created."""
    for name, value in (("node_id", node_id), ("cluster_id", cluster_id)):
        if not isinstance(value, str) or not value:
            raise LocalError(f"{name} must be a non-empty string, not {value!r}")


def closed_error(where: str) -> ClosedError:
    """The error for an operation on a store that is not open."""
    return ClosedError(f"{where}: the store is not open")


@dataclass(slots=True)
class LogShape:
    """The outline of a stored log, kept in memory by every store to validate writes.

    Invariants: ``snap_index <= last_index``; the stored entries are exactly
    ``snap_index + 1 .. last_index`` with non-decreasing terms, the first one's term at least
    ``snap_term``; ``hard_state.commit <= last_index``.
    """

    snap_index: int = 0
    snap_term: int = 0
    last_index: int = 0
    last_term: int = 0
    hard_state: HardState = field(default_factory=HardState)

    def plan_save(
        self,
        where: str,
        hard_state: HardState | None,
        entries: Sequence[Entry],
        snapshot: Snapshot | None,
        term_at: Callable[[int], int],
    ) -> tuple[LogShape, int | None]:
        """Validate one :meth:`Storage.save` and return the resulting shape and the index from
        which stored entries must be deleted (None if nothing stored is overwritten).

        ``term_at(i)`` returns the term of the stored entry at ``i`` (only asked for indexes
        strictly between the snapshot and the last index). Raises :class:`LocalError`.
        """
        snap_index, snap_term = self.snap_index, self.snap_term
        last_index, last_term = self.last_index, self.last_term
        delete_from: int | None = None
        if snapshot is not None:
            meta = snapshot.meta
            if meta.index < snap_index:
                raise LocalError(
                    f"{where}: the received snapshot ends at index {meta.index}, before the stored "
                    f"snapshot at {snap_index}"
                )
            if meta.term < 0:
                raise LocalError(f"{where}: snapshot term {meta.term} is negative")
            snap_index = last_index = meta.index
            snap_term = last_term = meta.term
        if entries:
            first = entries[0].index
            if first <= snap_index:
                raise LocalError(
                    f"{where}: entries start at index {first}, inside the snapshot (which ends at "
                    f"{snap_index})"
                )
            if first > last_index + 1:
                raise LocalError(
                    f"{where}: entries start at index {first}, leaving a gap after the last stored "
                    f"index {last_index}"
                )
            if first <= last_index:
                if snapshot is None and first <= self.hard_state.commit:
                    raise LocalError(
                        f"{where}: entries start at index {first}, overwriting committed entries "
                        f"(commit is {self.hard_state.commit})"
                    )
                delete_from = first
                prev_term = snap_term if first - 1 == snap_index else term_at(first - 1)
            else:
                prev_term = last_term
            expect, term = first, prev_term
            for e in entries:
                if e.index != expect or e.term < term or e.type not in _ENTRY_TYPES:
                    raise LocalError(_bad_entry(where, e, expect, term))
                expect += 1
                term = e.term
            last_index, last_term = expect - 1, term
        hs = self.hard_state
        if hard_state is not None:
            if hard_state.term < hs.term:
                raise LocalError(
                    f"{where}: hard state term would go back from {hs.term} to {hard_state.term}"
                )
            if hard_state.term == hs.term and hs.vote is not None and hard_state.vote != hs.vote:
                raise LocalError(
                    f"{where}: the vote of term {hs.term} would change from {hs.vote!r} "
                    f"to {hard_state.vote!r}"
                )
            if hard_state.commit < 0:
                raise LocalError(f"{where}: hard state commit {hard_state.commit} is negative")
            hs = hard_state
        if hs.commit > last_index:
            raise LocalError(
                f"{where}: hard state commit {hs.commit} would be beyond the last index {last_index}"
            )
        return LogShape(snap_index, snap_term, last_index, last_term, hs), delete_from

    def plan_compact(self, where: str, snapshot: Snapshot, term_at: Callable[[int], int]) -> LogShape:
        """Validate :meth:`Storage.save_snapshot` and return the resulting shape.

        The snapshot must not be older than the stored one and must agree with the stored log
        about the term at its index. Raises :class:`LocalError`.
        """
        meta = snapshot.meta
        if meta.index < self.snap_index:
            raise LocalError(
                f"{where}: the snapshot ends at index {meta.index}, before the stored snapshot at "
                f"{self.snap_index}"
            )
        if meta.index == self.snap_index:
            stored: int | None = self.snap_term
        elif meta.index < self.last_index:
            stored = term_at(meta.index)
        elif meta.index == self.last_index:
            stored = self.last_term
        else:
            stored = None  # beyond the stored log: every entry is covered
        if stored is not None and stored != meta.term:
            raise LocalError(
                f"{where}: the snapshot says index {meta.index} has term {meta.term}, the stored log "
                f"says {stored}"
            )
        if meta.term < 0:
            raise LocalError(f"{where}: snapshot term {meta.term} is negative")
        if meta.index >= self.last_index:
            return LogShape(meta.index, meta.term, meta.index, meta.term, self.hard_state)
        return LogShape(meta.index, meta.term, self.last_index, self.last_term, self.hard_state)


def _bad_entry(where: str, e: Entry, expect: int, prev_term: int) -> str:
    if e.index != expect:
        return f"{where}: entries are not contiguous: expected index {expect}, got {e.index}"
    if e.term < prev_term:
        return f"{where}: entry {e.index} has term {e.term}, lower than the term {prev_term} before it"
    return f"{where}: entry {e.index} has an unknown type {e.type!r}"


def check_loaded_log(
    where: str,
    hard_state: HardState,
    snapshot: Snapshot,
    entries: Sequence[Entry],
) -> LogShape:
    """Verify that a loaded log fits its snapshot and hard state; raise :class:`StorageError`.

    Returns the shape of the log.
    """
    meta = snapshot.meta
    expect, term = meta.index + 1, meta.term
    for e in entries:
        if e.index != expect:
            if e.index <= meta.index:
                problem = f"entry {e.index} is covered by the snapshot, which ends at index {meta.index}"
            elif expect == meta.index + 1:
                problem = f"the snapshot ends at index {meta.index} but the first entry is {e.index}"
            else:
                problem = f"entries {expect}..{e.index - 1} are missing (gap in the log)"
            raise StorageError(f"{where}: the log does not fit its snapshot: {problem}")
        if e.term < term:
            raise StorageError(
                f"{where}: the log is inconsistent: entry {e.index} has term {e.term}, lower than the "
                f"term {term} before it"
            )
        expect += 1
        term = e.term
    last_index = expect - 1
    if hard_state.commit > last_index:
        raise StorageError(
            f"{where}: the hard state's commit index {hard_state.commit} is beyond the last stored "
            f"index {last_index} (entries are missing)"
        )
    return LogShape(meta.index, meta.term, last_index, term, hard_state)
