"""An in-memory store with the same semantics as the SQLite one, for tests and the simulator."""

from __future__ import annotations

from collections.abc import Sequence

from phalanx_aio.core.types import Entry, HardState, InitialState, Snapshot
from phalanx_aio.errors import LocalError, StorageError
from phalanx_aio.storage.base import LogShape, Storage, StoredState, check_ids, closed_error

__all__ = ["MemoryStorage"]


class MemoryStorage(Storage):
    """A :class:`Storage` that keeps everything in this object.

    The data outlives :meth:`aclose`: opening the same object again is a restart that lost
    nothing, which is what tests of recovery need. Writes are atomic (they never await) and
    validated exactly as :class:`~phalanx_aio.storage.SQLiteStorage` validates them.
    :meth:`simulate_disk_full` makes writes fail as a full disk would.
    """

    def __init__(self, name: str = "<memory>") -> None:
        self._name = name
        self._identity: tuple[str, str] | None = None
        self._shape = LogShape()
        self._snapshot = Snapshot()
        self._entries: list[Entry] = []
        self._open = False
        self._full = False
        self._last_error: StorageError | None = None

    @property
    def location(self) -> str:
        """The name given at construction (``<memory>`` by default)."""
        return self._name

    @property
    def healthy(self) -> bool:
        """False after a write failed because of a simulated full disk, until one succeeds."""
        return self._last_error is None

    @property
    def last_error(self) -> StorageError | None:
        """The error of the last failed write, or None."""
        return self._last_error

    def simulate_disk_full(self, full: bool = True) -> None:
        """While ``full``, every write raises :class:`StorageError` and leaves the data unchanged."""
        self._full = full

    async def open(self, *, node_id: str, cluster_id: str) -> StoredState:
        """Load the state; the first open records the identity (see :meth:`Storage.open`)."""
        check_ids(node_id, cluster_id)
        if self._open:
            raise LocalError(f"{self._name}: the store is already open")
        created = self._identity is None
        if self._identity is None:
            self._identity = (node_id, cluster_id)
        elif self._identity != (node_id, cluster_id):
            have_node, have_cluster = self._identity
            raise StorageError(
                f"{self._name}: the store belongs to node {have_node!r} of cluster {have_cluster!r}, "
                f"not to node {node_id!r} of cluster {cluster_id!r}"
            )
        self._open = True
        state = InitialState(self._shape.hard_state, self._snapshot, tuple(self._entries))
        return StoredState(node_id, cluster_id, state, created)

    def _check_write(self) -> None:
        if not self._open:
            raise closed_error(self._name)
        if self._full:
            err = StorageError(f"{self._name}: disk full (simulated); nothing was written")
            self._last_error = err
            raise err

    def _term_at(self, index: int) -> int:
        return self._entries[index - self._shape.snap_index - 1].term

    async def save(
        self,
        *,
        hard_state: HardState | None = None,
        entries: Sequence[Entry] = (),
        snapshot: Snapshot | None = None,
    ) -> None:
        """Persist one ``Ready`` atomically (see :meth:`Storage.save`)."""
        if not self._open:
            raise closed_error(self._name)
        if hard_state is None and not entries and snapshot is None:
            return
        shape, delete_from = self._shape.plan_save(self._name, hard_state, entries, snapshot, self._term_at)
        self._check_write()
        if snapshot is not None:
            self._snapshot = snapshot
            self._entries = []
        if delete_from is not None:
            del self._entries[delete_from - shape.snap_index - 1 :]
        self._entries.extend(entries)
        self._shape = shape
        self._last_error = None

    async def save_snapshot(self, snapshot: Snapshot) -> None:
        """Store a local snapshot and drop the entries it covers (see :meth:`Storage.save_snapshot`)."""
        if not self._open:
            raise closed_error(self._name)
        shape = self._shape.plan_compact(self._name, snapshot, self._term_at)
        self._check_write()
        del self._entries[: shape.snap_index - self._shape.snap_index]
        self._snapshot = snapshot
        self._shape = shape
        self._last_error = None

    async def read_snapshot(self) -> Snapshot | None:
        """The stored snapshot, or None if there is none."""
        if not self._open:
            raise closed_error(self._name)
        return self._snapshot if self._snapshot.meta.index > 0 else None

    async def aclose(self) -> None:
        """Close; the data stays in this object for the next :meth:`open`."""
        self._open = False
