"""The core's output contract."""

from __future__ import annotations

from dataclasses import dataclass

from phalanx_aio.core.types import Entry, HardState, Message, Placement, ReadState, Snapshot

__all__ = ["Ready"]


@dataclass(frozen=True, slots=True)
class Ready:
    """Everything the core asks its driver to do, in one batch.

    A driver handles a ``Ready`` in exactly this order, then calls ``advance(ready)``:

    1. **Persist**, atomically and durably: ``snapshot`` (if any), then ``entries`` with
       overwrite-from-index semantics (delete every stored entry at or after
       ``entries[0].index``, then insert these), then ``hard_state`` (if any).
    2. **Send** ``messages``. They may promise what step 1 saved (a vote, an accepted append),
       so they must not leave before it is durable, unless ``send_before_persist`` is true:
       then they may leave before or during step 1 (thesis §10.2.1).
    3. **Install** ``snapshot`` into the state machine, then **apply** ``committed_entries`` in
       order (skipping NOOP entries; CONF entries carry membership changes).
    4. **Serve** ``read_states``: a read with that context may run once the state machine has
       applied ``index``. Fail the reads named in ``dropped_reads``. Record ``placements``:
       where forwarded proposals were placed, or why they were refused.

    The driver does not step or tick the core between ``ready()`` and ``advance()``.
    """

    hard_state: HardState | None = None
    """The new hard state, or ``None`` if unchanged."""
    entries: tuple[Entry, ...] = ()
    """Entries to persist, overwriting the stored log from ``entries[0].index`` on."""
    snapshot: Snapshot | None = None
    """A snapshot received from the leader, to persist and install. It replaces the whole
    stored log: the core has discarded every entry it held, even those past the snapshot."""
    messages: tuple[Message, ...] = ()
    """Messages to send once the above is durable."""
    committed_entries: tuple[Entry, ...] = ()
    """Committed entries to apply, in order."""
    read_states: tuple[ReadState, ...] = ()
    """Reads that may be served once their index is applied."""
    dropped_reads: tuple[bytes, ...] = ()
    """Contexts of reads that cannot be served here (leadership lost): fail them at once."""
    placements: tuple[Placement, ...] = ()
    """Answers to this node's forwarded (or retried) proposals, by the ``context`` given to
    :meth:`~phalanx_aio.core.raft.Raft.propose_batch` or
    :meth:`~phalanx_aio.core.raft.Raft.repropose`."""
    send_before_persist: bool = False
    """True if ``messages`` promise nothing that step 1 saves, so they may be sent before
    (or while) it is made durable. The core sets it for a leader whose term and vote are
    already durable: its messages carry its own log entries and a commit index that counts
    the leader's copy only once :meth:`~phalanx_aio.core.raft.Raft.advance` reported it
    persisted (thesis §10.2.1). Entries must still be durable before ``advance``, unless the
    driver writes them in the background: ``advance(rd, entries_durable=False)``, then
    :meth:`~phalanx_aio.core.raft.Raft.persisted` once they are.

    Such a driver must not save a ``hard_state`` ahead of those entries: the leader's commit
    index may cover its own entries that are not durable yet (its followers' copies alone can
    make a majority), and a store whose commit index lies beyond its last entry cannot be
    loaded (the core refuses it at start). Save the ``hard_state`` of such a ``Ready`` in the
    same atomic write as its entries, and a later ``hard_state`` while background writes are
    pending with (or after) the last of them; or save it with its commit index lowered to
    the last durable entry."""

    @property
    def must_sync(self) -> bool:
        """True if step 1 has anything to persist (so it needs an fsync). Conservative: a
        ``hard_state`` that only moves the commit index sets it too, although the commit index
        need not be durable (``RaftNode`` writes such a hard state with its next write)."""
        return bool(self.entries) or self.hard_state is not None or self.snapshot is not None

    def is_empty(self) -> bool:
        """True if there is nothing at all to do."""
        return not (
            self.must_sync
            or self.messages
            or self.committed_entries
            or self.read_states
            or self.dropped_reads
            or self.placements
        )
