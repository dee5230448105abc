"""The Raft log as the core holds it: a snapshot point, then every live entry, in memory.

Storage keeps a durable copy; the core never reads storage. The tail from ``unstable`` on is
not durable yet; from ``in_progress`` on it has not even been handed to storage (it goes out in
the next ``Ready``). The two differ only while a driver writes entries asynchronously.
"""

from __future__ import annotations

from collections.abc import Sequence
from operator import attrgetter

from phalanx_aio.core.types import Entry, Snapshot
from phalanx_aio.errors import LocalError

__all__ = ["RaftLog"]

_data_of = attrgetter("data")


def _size(entries: Sequence[Entry]) -> int:
    """:meth:`Entry.size` summed, in C."""
    return sum(map(len, map(_data_of, entries))) + 16 * len(entries)


class RaftLog:
    """Entries after a snapshot point, with the commit, apply and persistence marks.

    Invariants:

    * ``entries[i].index == snap_index + 1 + i`` (no gaps);
    * ``snap_index <= applied <= committed <= last_index()``, except that ``applied`` may lag
      behind ``snap_index`` while a received snapshot waits to be installed;
    * ``snap_index < unstable <= in_progress <= last_index() + 1``: entries from ``unstable``
      on are not persisted yet; those from ``in_progress`` on have not been handed to storage.
    """

    __slots__ = (
        "applied",
        "committed",
        "entries",
        "in_progress",
        "pending_snapshot",
        "snap_index",
        "snap_term",
        "unstable",
    )

    def __init__(self, snap_index: int = 0, snap_term: int = 0, entries: Sequence[Entry] = ()) -> None:
        self.snap_index = snap_index
        self.snap_term = snap_term
        self.entries: list[Entry] = list(entries)
        for i, e in enumerate(self.entries):
            if e.index != snap_index + 1 + i:
                raise LocalError(f"log entries are not contiguous after index {snap_index}: found {e.index}")
        self.committed = snap_index
        self.applied = snap_index
        self.unstable = self.last_index() + 1
        self.in_progress = self.unstable
        self.pending_snapshot: Snapshot | None = None

    # -- queries -----------------------------------------------------------------------------

    def first_index(self) -> int:
        """Index of the first entry held (one past the snapshot)."""
        return self.snap_index + 1

    def last_index(self) -> int:
        """Index of the last entry (the snapshot index when the log is empty)."""
        return self.snap_index + len(self.entries)

    def last_term(self) -> int:
        """Term of the last entry."""
        return self.entries[-1].term if self.entries else self.snap_term

    def term(self, index: int) -> int | None:
        """Term of the entry at ``index``; ``None`` if compacted away or beyond the end."""
        off = index - self.snap_index
        if off == 0:
            return self.snap_term
        if 0 < off <= len(self.entries):
            return self.entries[off - 1].term
        return None

    def match_term(self, index: int, term: int) -> bool:
        """True if this log holds an entry ``(term, index)``."""
        return self.term(index) == term

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """§5.4.1: is a log ending at ``(last_term, last_index)`` at least as up to date?"""
        my_term = self.last_term()
        return last_term > my_term or (last_term == my_term and last_index >= self.last_index())

    def entry(self, index: int) -> Entry:
        """The entry at ``index`` (must be held)."""
        return self.entries[index - self.snap_index - 1]

    def size_of(self, lo: int, hi: int) -> int:
        """Flow-control bytes (:meth:`Entry.size` summed) of the held entries ``[lo, hi)``."""
        return _size(self.entries[lo - self.snap_index - 1 : hi - self.snap_index - 1])

    def slice(self, lo: int, hi: int, max_bytes: int, max_count: int) -> list[Entry]:
        """Entries ``[lo, hi)``, stopping before ``max_bytes``/``max_count`` (at least one)."""
        start = lo - self.snap_index - 1
        end = min(hi - self.snap_index - 1, start + max_count)
        out = self.entries[start:end]
        if _size(out) <= max_bytes:
            return out
        size = 0
        for i, e in enumerate(out):
            size += len(e.data) + 16
            if size > max_bytes and i > 0:
                return out[:i]
        return out

    def find_conflict_by_term(self, index: int, term: int) -> int:
        """The largest index ``<= index`` whose term is ``<= term`` (fast backtracking).

        Returns at least ``snap_index``; entries before it are committed and match anyway.
        """
        index = min(index, self.last_index())
        while index > self.snap_index:
            t = self.entries[index - self.snap_index - 1].term
            if t <= term:
                break
            index -= 1
        return index

    def unstable_entries(self) -> list[Entry]:
        """Entries not yet persisted (handed to storage or not)."""
        return self.entries[self.unstable - self.snap_index - 1 :]

    def entries_to_persist(self) -> list[Entry]:
        """Entries not yet handed to storage (what the next ``Ready`` carries)."""
        return self.entries[self.in_progress - self.snap_index - 1 :]

    def next_committed(self, max_bytes: int) -> list[Entry]:
        """Committed entries not yet applied (bounded by ``max_bytes``, at least one)."""
        lo = max(self.applied, self.snap_index) + 1
        if lo > self.committed:
            return []
        return self.slice(lo, self.committed + 1, max_bytes, 1 << 62)

    # -- changes -----------------------------------------------------------------------------

    def append(self, entries: Sequence[Entry]) -> None:
        """Append entries that follow the last one (the leader's own proposals)."""
        self.entries.extend(entries)

    def find_conflict(self, entries: Sequence[Entry]) -> int:
        """Position in ``entries`` of the first entry this log does not already hold
        (a different term or beyond the end); ``len(entries)`` if all are held."""
        for pos, e in enumerate(entries):
            if self.term(e.index) != e.term:
                return pos
        return len(entries)

    def truncate_and_append(self, entries: Sequence[Entry]) -> None:
        """Overwrite from ``entries[0].index`` on: drop our suffix there, then append.

        Committed entries are never overwritten (the caller checks; this asserts).
        """
        first = entries[0].index
        assert first > self.committed, f"overwriting committed index {first} <= {self.committed}"
        del self.entries[first - self.snap_index - 1 :]
        self.entries.extend(entries)
        if first < self.unstable:
            self.unstable = first
        if first < self.in_progress:
            self.in_progress = first

    def commit_to(self, index: int) -> bool:
        """Raise the commit index; True if it moved."""
        if index > self.committed:
            assert index <= self.last_index(), f"commit {index} beyond last index {self.last_index()}"
            self.committed = index
            return True
        return False

    def stable_to(self, index: int, term: int) -> None:
        """Storage persisted entries up to ``(term, index)``; ignored if since overwritten."""
        if index >= self.unstable and self.term(index) == term:
            self.unstable = index + 1
            if self.in_progress < self.unstable:
                self.in_progress = self.unstable

    def accept_to(self, index: int, term: int) -> None:
        """Entries up to ``(term, index)`` were handed to storage, which has not yet said they
        are durable (:meth:`stable_to` follows); ignored if since overwritten."""
        if index >= self.in_progress and self.term(index) == term:
            self.in_progress = index + 1

    def restore(self, snapshot: Snapshot) -> None:
        """Replace the whole log with a received snapshot (to be persisted and installed)."""
        self.snap_index = snapshot.meta.index
        self.snap_term = snapshot.meta.term
        self.entries = []
        self.committed = snapshot.meta.index
        self.unstable = snapshot.meta.index + 1
        self.in_progress = self.unstable
        self.pending_snapshot = snapshot

    def compact_to(self, index: int) -> list[Entry]:
        """Drop entries up to ``index`` (already applied and saved in a snapshot).

        Returns the list that held them (the kept entries too, which stay in the log): the
        entries are freed when the caller drops it. Only the kept tail is copied, so a
        caller can free a long log in steps rather than all in this call."""
        assert self.snap_index <= index <= self.applied, "compact only applied entries"
        term = self.term(index)
        assert term is not None
        old = self.entries
        self.entries = old[index - self.snap_index :]
        self.snap_index = index
        self.snap_term = term
        return old
