"""RaftNode: the asyncio driver that applications embed.

One task (the *loop*) owns the sans-IO core and consumes one ``asyncio.Queue``. Everything
else only enqueues: the ticker (one item per tick), the transport (peer messages, unreachable
peers, snapshot reports) and the public methods (reads, membership changes, transfers, each
with its future; proposals wait in a list beside the queue, woken by one queue item). The
loop drains what is queued, steps the core (in bounded turns) and handles each ``Ready`` in
the documented order: persist, then send, then apply, then resolve futures and serve reads.
A leader sends first and leaves its own entries to a writer task (``Ready.send_before_persist``,
``Raft.advance(entries_durable=False)``): the writer reports each durable write back through
the queue, and the core counts the leader's copy only then. No locks.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import random
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from operator import attrgetter, itemgetter
from types import TracebackType
from typing import Any, Final, TypeVar

from phalanx_aio._deadlines import Deadlines
from phalanx_aio.core.config import Config
from phalanx_aio.core.membership import ConfChange, ConfChangeType, decode_conf
from phalanx_aio.core.raft import Raft, Role, Status, bootstrap_state
from phalanx_aio.core.types import (
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    Placement,
    PlacementOutcome,
    Snapshot,
)
from phalanx_aio.errors import (
    ClosedError,
    LocalError,
    NotApplied,
    NotLeader,
    OutcomeUnknown,
    PhalanxError,
    ProposalDropped,
    ProtocolError,
    StorageError,
    Timeout,
)
from phalanx_aio.node import _envelope
from phalanx_aio.node._attach import attach_state
from phalanx_aio.node._forwards import Forward, Forwards
from phalanx_aio.node._leader_work import EventStream, LeaderFn, LeaderWork, Subscriptions
from phalanx_aio.node._reads import Reads
from phalanx_aio.node.events import (
    ElectionStarted,
    ElectionWon,
    EventListener,
    LeaderChanged,
    MembershipChanged,
    NodeEvent,
    RemovedFromCluster,
    RoleChanged,
    SnapshotRestored,
    SnapshotSent,
    SnapshotTaken,
    TermChanged,
)
from phalanx_aio.node.state_machine import StateMachine
from phalanx_aio.storage.base import Storage
from phalanx_aio.transport.base import Transport

__all__ = ["NodeStatus", "RaftNode"]

log = logging.getLogger("phalanx_aio.node")

T = TypeVar("T")

_TICK: Final = 0
_MSGS: Final = 1
_PROPOSE: Final = 2
_READ: Final = 3
_CONF: Final = 4
_TRANSFER: Final = 5
_UNREACHABLE: Final = 6
_SNAP_STATUS: Final = 7
_STOP: Final = 8
_PERSISTED: Final = 9  # (kind, index, term): the background write of the leader's entries is durable
_WRITE_FAILED: Final = 10  # (kind, exception): the background write failed for good
_REMOVED: Final = 11  # (kind, peer, index): a peer says a committed change removed this node
_SNAP_BUILT: Final = 12  # (kind, index, data or exception): a snapshot built off the loop
_WAKE_PROPOSE: Final = (_PROPOSE,)  # proposals wait in RaftNode._carry; this only wakes the loop
_COMMAND_TYPES: Final = (bytes, bytearray, memoryview)

# Work bounds of one loop turn, so that a turn (one storage write, one burst of sends) stays
# short and ticks, heartbeats and peer messages keep flowing under any load: at most this many
# proposals (or appended entries received), and bytes of proposals. Within that, the number
# adapts so that a turn takes at most about two ticks (a fifth of the shortest LAN election
# timeout): halved after a longer turn, grown by a quarter after a full one that was quick
# enough (see RaftNode._adapt_turn).
_TURN_MAX_PROPOSALS: Final = 4096
_TURN_MIN_PROPOSALS: Final = 256
_TURN_MAX_BYTES: Final = 512 << 10

# A leader writes its own entries in the background while its loop goes on (RaftNode._write_behind).
# Entries handed over while a write is in flight wait for the next one (one fsync for all of
# them); past this many, the loop waits for the disk instead of taking more proposals.
_WRITE_BEHIND_MAX_ENTRIES: Final = 4 * _TURN_MAX_PROPOSALS
_WRITE_BEHIND_MAX_BYTES: Final = 64 << 20  # the same bound, for large commands

_data_of = attrgetter("data")
_FREE_STEP: Final = 32_768  # compacted entries freed per loop turn (see _free_compacted)

# A local snapshot that a full disk refused is written again after this delay, doubled after
# each failure up to the maximum (seconds); meanwhile the store keeps the entries it covers.
_SNAP_RETRY_MIN: Final = 0.5
_SNAP_RETRY_MAX: Final = 30.0

# The request id of an envelope, packed after the proposer's prefix and read back (_envelope).
_pack_request = _envelope.pack_request
_unpack_request = _envelope.unpack_request


class _Batch:
    """The outcomes of one ``propose_many`` call, whose commands have the consecutive request
    ids ``first``, ``first + 1``, ...; ``fut`` completes once every command has one."""

    __slots__ = ("errors", "first", "fut", "left", "results")

    def __init__(self, first: int, n: int, fut: asyncio.Future[None]) -> None:
        self.first = first
        self.results: list[Any] = [None] * n
        self.errors: dict[int, BaseException] = {}
        self.left = n
        self.fut = fut

    def settle(self, req: int, value: Any, exc: BaseException | None) -> None:
        """Record the outcome of request ``req`` (once: the caller took ``req`` out of the
        node's pending table first)."""
        i = req - self.first
        if exc is not None:
            self.errors[i] = exc
        else:
            self.results[i] = value
        self.left -= 1
        if self.left == 0 and not self.fut.done():
            self.fut.set_result(None)


def _settle(w: asyncio.Future[Any] | _Batch, req: int, value: Any, exc: BaseException | None) -> None:
    """Give request ``req`` its outcome, whether it waits alone or in a batch (once: a
    future already done, e.g. timed out, keeps its outcome)."""
    if isinstance(w, _Batch):
        w.settle(req, value, exc)
    elif not w.done():
        if exc is None:
            w.set_result(value)
        else:
            w.set_exception(exc)


@dataclass(frozen=True, slots=True)
class NodeStatus:
    """A report of one node's state (``RaftNode.status()``)."""

    id: str
    role: str
    term: int
    leader: str | None
    commit: int
    applied: int
    first_index: int
    last_index: int
    voters: tuple[str, ...]
    learners: tuple[str, ...]
    healthy: bool
    """False while storage refuses writes (disk full); the node then acknowledges nothing."""
    pending_proposals: int
    core: Status
    """The core's own status (per-follower progress on a leader)."""
    removed_at: int | None = None
    """The log index of the committed change that removed this node, once a member said so
    (see :class:`~phalanx_aio.node.events.RemovedFromCluster`); None otherwise."""


class _NodeLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """Puts the node id and term on every record."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        node = self.extra["node"] if self.extra else None
        extra = dict(kwargs.get("extra") or {})
        extra.setdefault("node_id", getattr(node, "id", "?"))
        core = getattr(node, "_core", None)
        extra.setdefault("term", core.term if core is not None else 0)
        kwargs["extra"] = extra
        return f"[{extra['node_id']} t{extra['term']}] {msg}", kwargs


class RaftNode:
    """One member of a Raft cluster, embedded in an asyncio application.

    Use it as ``async with RaftNode(...) as node:`` (or ``await node.start()`` and
    ``await node.aclose()``). ``peers`` (id to address) and ``address`` make up the first
    configuration of a brand-new cluster; on a restart the configuration comes from storage.
    With ``join=True`` a brand-new node starts empty and waits to be added by the cluster.
    ``node_id`` is a non-empty string of at most 238 bytes in UTF-8 (every command this node
    proposes carries it); anything else raises :class:`~phalanx_aio.errors.LocalError`.
    ``state_machine`` is a :class:`StateMachine`, or a list of
    :class:`~phalanx_aio.ReplicatedState` objects to host together.
    """

    def __init__(
        self,
        node_id: str,
        *,
        address: str,
        peers: Mapping[str, str],
        state_machine: StateMachine | Sequence[StateMachine],
        storage: Storage,
        config: Config | None = None,
        cluster_id: str = "phalanx",
        transport: Transport | None = None,
        join: bool = False,
        snapshot_every: int = 10_000,
        snapshot_bytes: int = 64 << 20,
        max_pending: int = 10_000,
        max_pending_bytes: int = 256 << 20,
        max_pending_reads: int = 10_000,
        default_timeout: float = 10.0,
        seed: int | None = None,
        on_event: EventListener | None = None,
        hand_over_on_close: bool = True,
    ) -> None:
        if not node_id:
            raise LocalError("node_id must be a non-empty string")
        if len(node_id.encode()) > _envelope.MAX_NODE_ID_BYTES:
            size, limit = len(node_id.encode()), _envelope.MAX_NODE_ID_BYTES
            raise LocalError(f"node_id must be at most {limit} bytes in UTF-8, not {size}")
        if node_id in peers:
            raise LocalError(f"peers must not include this node ({node_id!r})")
        if min(snapshot_every, snapshot_bytes, max_pending, max_pending_bytes, max_pending_reads) < 1:
            raise LocalError(
                "snapshot_every, snapshot_bytes, max_pending, max_pending_bytes and max_pending_reads "
                "must be >= 1"
            )
        if not default_timeout > 0:
            raise LocalError(f"default_timeout must be positive, not {default_timeout!r}")
        self.id = node_id
        self.address = address
        self.cluster_id = cluster_id
        self.config = config or Config.lan()
        self._initial_peers = dict(peers)
        # A list of replicated objects is served as one group; replicated objects learn their node.
        self._sm: StateMachine = attach_state(state_machine, self)
        self._storage = storage
        self._transport = transport
        self._join = join
        self._snapshot_every = snapshot_every
        # Bytes of commands applied since the last snapshot; one is due past the larger of
        # snapshot_bytes and the last snapshot's size (so large values cannot grow the log for
        # long, and snapshot work stays in proportion to the log it saves).
        self._snapshot_bytes = snapshot_bytes
        self._log_bytes = 0
        self._log_bytes_due = snapshot_bytes
        self._max_pending = max_pending
        # Bytes of the commands whose proposers wait (propose, propose_many): past
        # max_pending_bytes a new proposal is refused, unless nothing waits (one always goes).
        self._max_pending_bytes = max_pending_bytes
        self._pending_bytes = 0
        self._default_timeout = default_timeout
        base_seed = seed if seed is not None else int.from_bytes(os.urandom(8), "big")
        self._rng = random.Random(base_seed)
        # Snapshot timing has its own generator, so it does not shift the core's draws.
        self._snap_rng = random.Random(base_seed ^ 0x5EED)
        self._snapshot_due = self._next_snapshot_due()
        self._log_bytes_due = self._next_bytes_due(0)
        self._core: Raft | None = None
        self._queue: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
        self._loop_task: asyncio.Task[None] | None = None
        self._ticker_task: asyncio.Task[None] | None = None
        self._req_ids = itertools.count(1)
        # Request ids (and read ids) count from 1 in every run; the run's random nonce tells
        # them apart from those of this node's earlier runs, whose entries may still commit.
        self._nonce = os.urandom(_envelope.NONCE_BYTES)
        # Every command proposed here is wrapped after these bytes (see _envelope), which also
        # tell this run's own entries apart when they are applied.
        self._own = _envelope.prefix(_envelope.run_origin(node_id, self._nonce))
        self._other = self._own  # the prefix of the last other proposer's entries applied
        # This node's proposals forwarded to a leader and not answered yet (see _forwards).
        self._forwards = Forwards()
        self._sweep_in = 0  # ticks until forwards and reads nobody waits for are forgotten
        # Nodes that answered a forward in this run: they check retries for earlier copies (a
        # leader of an earlier release would append a retry again), and (leader, term) last
        # probed to find out.
        self._answering: set[str] = {node_id}
        self._probed: tuple[str, int] | None = None
        # request id -> future of a proposal made on this node (matched by envelope), or the
        # _Batch of a propose_many call. An entry leaves once the request has its outcome.
        self._pending: dict[int, asyncio.Future[Any] | _Batch] = {}
        # Proposals (request id, wrapped command) not yet handed to the core, oldest first;
        # the loop takes them in bounded turns (see _TURN_MAX_PROPOSALS). _wake_queued: a
        # _WAKE_PROPOSE item is in the queue (so one item wakes the loop for many proposals).
        self._carry: deque[tuple[int, bytes]] = deque()
        # Proposals handed to the core while no leader was known (an election): request id ->
        # wrapped command, proposed as soon as a leader is known, unless their caller gave up.
        self._leaderless: dict[int, bytes] = {}
        self._wake_queued = False
        self._turn_cap = _TURN_MAX_PROPOSALS
        self._deadlines = Deadlines(
            lambda what, limit: Timeout(
                f"{node_id}: {what} not finished within {limit} s; its outcome is unknown"
            )
        )
        # The term and vote storage holds, and a newer hard state that only moved the commit
        # index, not saved on its own (the commit index need not be durable).
        self._saved_tv: tuple[int, str | None] = (0, None)
        self._unsaved_hs: HardState | None = None
        # The leader's own entries handed to the background writer and not yet written (with
        # the hard state to write along), and the writer task while it runs.
        self._behind: list[Entry] = []
        self._behind_bytes = 0  # their command bytes (the wait for the disk is bounded in both)
        self._behind_hs: HardState | None = None
        self._behind_snap: Snapshot | None = None  # a local snapshot to store, then compact
        # A local snapshot the store could not take for lack of space, to try again at that
        # loop time (the store still holds every entry it covers), and the next delay.
        self._snap_retry: Snapshot | None = None
        self._snap_retry_at = 0.0
        self._snap_retry_delay = _SNAP_RETRY_MIN
        # A snapshot being encoded in a worker thread (StateMachine.snapshot_later).
        self._snap_building = False
        self._snap_task: asyncio.Task[None] | None = None
        # Lists of entries a compaction dropped, freed a step per loop turn: freeing a
        # million entries in one go would stall the loop.
        self._compacted: list[list[Entry]] = []
        self._writer: asyncio.Task[None] | None = None
        # Proposals of this node placed in the log (appended here as leader, or placed by the
        # leader they were forwarded to) and not yet committed (or found overwritten), one
        # batch per turn or forward: (first index, term, [(request id, data), ...]) at
        # consecutive indexes. Each leaves once committed entries pass its end.
        self._placed: list[tuple[int, int, list[tuple[int, bytes]]]] = []
        self._conf_waiters: dict[int, tuple[int, asyncio.Future[None]]] = {}
        self._deferred_conf: list[tuple[ConfChange, asyncio.Future[Any]]] = []
        self._reads = Reads(self._nonce, max_pending_reads)
        self._leader_changed = asyncio.Event()
        self._last_leader: str | None = None
        self._closed = False
        self._closing = False
        self._hand_over_on_close = hand_over_on_close
        self._failure: BaseException | None = None
        self._healthy = True
        self._peers_conf: ConfState | None = None
        self._removed_members: dict[str, int] = {}  # former members -> index of their removal
        self._removed_at: int | None = None  # set once a member says this node was removed
        self.log = _NodeLogger(log, {"node": self})
        # Event listeners (see events.py); events are built only while this list is non-empty.
        self._listeners: list[EventListener] = [on_event] if on_event is not None else []
        self._seen: tuple[int, Role, str | None] = (0, Role.FOLLOWER, None)
        self._subscriptions = Subscriptions()  # while_leader() and events(), ended by aclose()

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> RaftNode:
        """Start the node."""
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Close the node."""
        await self.aclose()

    async def start(self) -> None:
        """Open storage (creating the cluster's first configuration if new), start the
        transport, the loop and the ticker."""
        if self._core is not None or self._closed:
            raise LocalError("a RaftNode can be started once")
        stored = await self._storage.open(node_id=self.id, cluster_id=self.cluster_id)
        state = stored.state
        if stored.created and not self._join:
            voters = {
                self.id: self.address.encode(),
                **{k: v.encode() for k, v in self._initial_peers.items()},
            }
            state = bootstrap_state(voters)
            await self._storage.save(hard_state=state.hard_state, entries=state.entries)
        # Leases are timed on the loop's monotonic clock, in ticks: a stalled loop misses ticks,
        # and its lease must not last longer for it.
        loop_time, interval = asyncio.get_running_loop().time, self.config.tick_interval
        self._core = Raft(self.id, self.config, self._rng, state, clock=lambda: loop_time() / interval)
        self._saved_tv = (state.hard_state.term, state.hard_state.vote)
        self._seen = (self._core.term, self._core.role, self._core.leader)
        snap = state.snapshot
        if snap.meta.index > 0:
            await self._restore_state(snap.data)
            if self._listeners:
                self._emit(SnapshotRestored(self.id, self._core.term, snap.meta.index, "storage"))
        if self._transport is None:
            from phalanx_aio.transport.grpc import GrpcTransport

            self._transport = GrpcTransport(node_id=self.id, cluster_id=self.cluster_id, listen=self.address)
        self._update_peers(self._core.conf)
        await self._transport.start(self)
        self._loop_task = asyncio.create_task(self._run(), name=f"phalanx-loop-{self.id}")
        self._ticker_task = asyncio.create_task(self._ticker(), name=f"phalanx-ticker-{self.id}")
        self.log.info("started (%d entries, snapshot at %d)", len(state.entries), snap.meta.index)

    async def aclose(self, *, hand_over: bool | None = None) -> None:
        """Stop the node: pending operations fail with :class:`ClosedError`. Idempotent.

        A leader first hands leadership to the most caught-up other voter, waiting at most the
        upper end of the election timeout for it to lead, so that the cluster does not wait out
        an election to go on (proposals are refused meanwhile, with ``ProposalDropped``).
        ``hand_over=False``, or ``RaftNode(hand_over_on_close=False)``, stops at once."""
        if self._closed or self._closing:
            return
        self._closing = True
        try:
            if self._hand_over_on_close if hand_over is None else hand_over:
                await self._hand_over()
        finally:
            await self._close()

    async def _hand_over(self) -> None:
        """Transfer leadership before closing, if this node leads and another voter exists."""
        if not (self.running and self.is_leader):
            return
        core = self._require_core()
        live = [
            (pr.match, nid)
            for nid, pr in core.status().progress.items()
            if nid != self.id and nid in core.conf.voters and pr.recent_active
        ]
        if not live:
            return  # no other voter heard from lately: nobody to hand over to
        limit = self.config.election_seconds()[1]
        try:
            new = await self.transfer_leadership(max(live)[1], timeout=limit)
        except PhalanxError as exc:
            self.log.info("closing without handing leadership over: %s", exc)
        else:
            self.log.info("handed leadership over to %s before closing", new)

    async def _close(self) -> None:
        self._closed = True
        if self._snap_task is not None:
            self._snap_task.cancel()  # its thread finishes on its own; its result is dropped
        await self._subscriptions.aclose()  # leader work cancelled (and awaited), event streams end
        tasks = [t for t in (self._ticker_task, self._loop_task) if t is not None]
        if self._loop_task is not None:
            self._queue.put_nowait((_STOP,))
        try:
            if self._ticker_task is not None:
                self._ticker_task.cancel()
            if self._loop_task is not None:
                # Let an in-flight save finish (never abandon a write half-way), then stop.
                await asyncio.shield(asyncio.wait({self._loop_task}, timeout=30))
                self._loop_task.cancel()
            for t in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
            if self._writer is not None:  # only if the loop was cancelled mid-turn
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await asyncio.wait_for(asyncio.shield(self._writer), 30)
        finally:
            self._fail_all(ClosedError(f"node {self.id} is closed"))
            if self._transport is not None:
                await self._transport.aclose()
            await self._storage.aclose()
            self.log.info("closed")

    # ------------------------------------------------------------------ queries

    @property
    def leader_id(self) -> str | None:
        """The leader this node knows of, if any (``None`` once the node is closed)."""
        return self._core.leader if self._core is not None and not self._closed else None

    @property
    def is_leader(self) -> bool:
        """True if this node is the leader (never once it is closed)."""
        return self._core is not None and not self._closed and self._core.is_leader

    @property
    def healthy(self) -> bool:
        """False while storage refuses writes, or after a fatal failure."""
        return self._healthy and self._failure is None

    @property
    def running(self) -> bool:
        """True from :meth:`start` until :meth:`aclose`, unless the node's loop failed."""
        return self._core is not None and not self._closed and self._failure is None

    @property
    def log_bytes(self) -> int:
        """Bytes of commands applied since this node's last snapshot (the log a snapshot
        would compact away; see ``snapshot_bytes``)."""
        return self._log_bytes

    @property
    def state_machine(self) -> StateMachine:
        """The application's state machine (read it through :meth:`read` for linearizability)."""
        return self._sm

    def status(self) -> NodeStatus:
        """A report of this node's state."""
        core = self._require_core()
        st = core.status()
        return NodeStatus(
            id=self.id,
            role=st.role.value,
            term=st.term,
            leader=st.leader,
            commit=st.commit,
            applied=st.applied,
            first_index=st.first_index,
            last_index=st.last_index,
            voters=tuple(sorted(st.conf.voters)),
            learners=tuple(sorted(st.conf.learners)),
            healthy=self.healthy,
            pending_proposals=len(self._pending),
            core=st,
            removed_at=self._removed_at,
        )

    async def wait_for_leader(
        self, timeout: float | None = None, *, leader: str | None = None, exclude: str | None = None
    ) -> str:
        """Wait until a leader is known and return its id: ``leader`` if given, any leader but
        ``exclude`` if given (for example the one that just stopped), else any leader."""
        self._check_open()
        limit = timeout if timeout is not None else self._default_timeout
        deadline = asyncio.get_running_loop().time() + limit
        while True:
            cur = self.leader_id
            if cur is not None and (leader is None or cur == leader) and cur != exclude:
                return cur
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                raise Timeout(f"{self.id}: no leader within {limit} s")
            self._leader_changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._leader_changed.wait(), left)
            self._check_open()

    # ------------------------------------------------------------------ events

    def add_listener(self, listener: EventListener) -> None:
        """Call ``listener(event)`` for every :class:`~phalanx_aio.node.events.NodeEvent` from
        now on (elections, leader and term changes, membership changes, snapshots). It runs in
        the node's loop task and must not block; what it raises is logged and ignored."""
        if not callable(listener):
            raise LocalError(f"an event listener must be callable, not {type(listener).__name__}")
        if not self._listeners and self._core is not None:
            # Nobody watched until now: start from the present, report no stale changes.
            self._seen = (self._core.term, self._core.role, self._core.leader)
        self._listeners.append(listener)

    def remove_listener(self, listener: EventListener) -> None:
        """Stop calling ``listener``; raises :class:`LocalError` if it was not added."""
        try:
            self._listeners.remove(listener)
        except ValueError:
            raise LocalError("that listener was not added to this node") from None

    def while_leader(
        self,
        fn: LeaderFn,
        *,
        name: str | None = None,
        restart_delay: float = 1.0,
        max_restart_delay: float = 30.0,
    ) -> LeaderWork:
        """Run ``await fn(term)`` whenever this node leads, cancelled as soon as it stops.

        ``fn`` starts when the node becomes the leader of ``term`` (at once if it leads now)
        and is cancelled, from the node's loop in the same turn, when it steps down or hands
        leadership over, or when the node closes; it starts again with the new term whenever
        the node leads again. If ``fn`` returns, it is done for that term; if it raises, the
        error is logged and counted and ``fn`` runs again after ``restart_delay`` seconds,
        doubling up to ``max_restart_delay``, while the node still leads that term.

        The term is a fencing token: two nodes can briefly both run ``fn`` (a deposed leader
        learns of its successor only after a while), the newer one with a higher term. Returns
        a :class:`~phalanx_aio.node.LeaderWork`; ``await work.stop()`` or ``async with`` ends
        it. Call it from the event loop. Raises :class:`ClosedError` once the node is closed.
        """
        self._check_subscribable()
        return LeaderWork(
            self,
            self._subscriptions,
            fn,
            name=name,
            restart_delay=restart_delay,
            max_restart_delay=max_restart_delay,
        )

    def events(self, *, max_queue: int = 1024) -> EventStream:
        """This node's events from now on as an async iterator: ``async for ev in
        node.events()``. At most ``max_queue`` wait for the consumer; beyond, the oldest is
        dropped and counted (:attr:`EventStream.dropped <phalanx_aio.node.EventStream.dropped>`).
        The iteration ends when the node closes. Raises :class:`ClosedError` once it is closed.
        """
        self._check_subscribable()
        return EventStream(self, self._subscriptions, max_queue=max_queue)

    def _check_subscribable(self) -> None:
        if self._closed or self._failure is not None or self._subscriptions.closed:
            raise ClosedError(f"node {self.id} is closed")

    def _leader_term(self) -> int | None:
        """The term this node leads, or ``None`` (not the leader, closed or stopped)."""
        core = self._core
        if core is None or self._closed or self._failure is not None or not core.is_leader:
            return None
        return core.term

    def _emit(self, event: NodeEvent) -> None:
        for listener in tuple(self._listeners):
            try:
                listener(event)
            except Exception:
                self.log.exception("event listener %r failed on %r", listener, event)

    def _observe(self, core: Raft) -> None:
        """Report how the core's term, role and leader changed since the last observation
        (called after every input while someone listens)."""
        term, role, leader = core.term, core.role, core.leader
        seen_term, seen_role, seen_leader = self._seen
        if term == seen_term and role is seen_role and leader == seen_leader:
            return
        self._seen = (term, role, leader)
        if term != seen_term:
            self._emit(TermChanged(self.id, term, seen_term))
            if core.vote == self.id:  # a node votes for itself only in its own campaign
                self._emit(ElectionStarted(self.id, term))
        if role is not seen_role:
            self._emit(RoleChanged(self.id, term, role.value, seen_role.value))
            if role is Role.LEADER:
                self._emit(ElectionWon(self.id, term))
        if leader != seen_leader:
            self._emit(LeaderChanged(self.id, term, leader, seen_leader))

    # ------------------------------------------------------------------ operations

    async def propose(self, command: bytes, *, timeout: float | None = None) -> Any:
        """Replicate ``command``; return the state machine's result once it is committed and
        applied on this node.

        Raises :class:`NotLeader` (no leader known, or forwarding off) and
        :class:`ProposalDropped` (overloaded, transfer in progress) at once: the command was not
        and will not be applied. :class:`NotApplied` also means its entry was overwritten by a
        new leader. :class:`Timeout` means the outcome is unknown.
        """
        self._check_open()
        if not isinstance(command, _COMMAND_TYPES):
            raise LocalError(f"a command must be bytes, not {type(command).__name__}")
        pending = self._pending
        if len(pending) >= self._max_pending:
            raise ProposalDropped(f"{self.id}: overloaded ({len(pending)} proposals pending)")
        size = len(command)
        if self._pending_bytes + size > self._max_pending_bytes and pending:
            raise ProposalDropped(f"{self.id}: overloaded ({self._pending_bytes} bytes of proposals pending)")
        self._pending_bytes += size
        req = next(self._req_ids)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        pending[req] = fut
        self._carry.append((req, self._own + _pack_request(req) + bytes(command)))
        if not self._wake_queued:
            self._wake_queued = True
            self._queue.put_nowait(_WAKE_PROPOSE)
        limit = timeout if timeout is not None else self._default_timeout
        waiters = self._deadlines.add(loop, fut, limit, "proposal")
        try:
            return await fut
        except BaseException as exc:
            if self._leaderless and self._not_proposed((req,)) and isinstance(exc, Timeout):
                raise NotLeader(None, f"{self.id}: no leader known within {limit} s") from None
            raise
        finally:  # an outcome, a timeout or a cancelled caller: forget the request
            del waiters[fut]
            pending.pop(req, None)
            self._pending_bytes -= size

    async def propose_many(
        self,
        commands: Iterable[bytes],
        *,
        timeout: float | None = None,
        return_exceptions: bool = False,
    ) -> list[Any]:
        """Replicate several commands as one batch; return the state machine's results, in
        order, once every command is committed and applied on this node.

        The commands go to the core together (consecutive log entries, one append message
        per follower), so a batch costs far less than as many :meth:`propose` calls. Each
        command is still applied on its own, and may have its own outcome.

        Raises :class:`NotLeader` and :class:`ProposalDropped` at once when the batch is
        refused (none of it was or will be applied; ``max_pending`` counts every command),
        and :class:`Timeout` if some command has no outcome within ``timeout`` (the outcome
        of the unfinished ones is unknown). Otherwise, if a command failed (the state machine
        raised, or its entry was overwritten: :class:`NotApplied`), the first such error is
        raised, unless ``return_exceptions`` is true: then every outcome is returned, the
        errors as exception objects in their commands' places (including :class:`Timeout`
        for the commands unfinished at the deadline).
        """
        self._check_open()
        if isinstance(commands, bytes | bytearray | memoryview | str):
            raise LocalError("propose_many takes an iterable of commands, not a single command")
        cmds = list(commands)
        for c in cmds:
            if not isinstance(c, _COMMAND_TYPES):
                raise LocalError(f"a command must be bytes, not {type(c).__name__}")
        n = len(cmds)
        if n == 0:
            return []
        pending = self._pending
        if len(pending) + n > self._max_pending:
            raise ProposalDropped(f"{self.id}: overloaded ({len(pending)} proposals pending, {n} more asked)")
        size = sum(map(len, cmds))
        if self._pending_bytes + size > self._max_pending_bytes and pending:
            raise ProposalDropped(
                f"{self.id}: overloaded ({self._pending_bytes} bytes of proposals pending, {size} more asked)"
            )
        self._pending_bytes += size
        # Consecutive ids: nothing else runs between these calls.
        first = next(self._req_ids)
        for _ in range(n - 1):
            next(self._req_ids)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        batch = _Batch(first, n, fut)
        own = self._own
        items = [(req, own + _pack_request(req) + bytes(c)) for req, c in enumerate(cmds, first)]
        for req, _ in items:
            pending[req] = batch
        self._carry.extend(items)
        if not self._wake_queued:
            self._wake_queued = True
            self._queue.put_nowait(_WAKE_PROPOSE)
        limit = timeout if timeout is not None else self._default_timeout
        waiters = self._deadlines.add(loop, fut, limit, f"batch of {n} proposals")
        try:
            try:
                await fut
            except BaseException as exc:
                held = self._leaderless and self._not_proposed(range(first, first + n))
                if not isinstance(exc, Timeout):
                    raise
                failure: PhalanxError = exc
                if held:  # no leader all along: certainly not applied
                    failure = NotLeader(None, f"{self.id}: no leader known within {limit} s")
                if not return_exceptions:
                    raise failure from None
                for req in range(first, first + n):
                    if pending.pop(req, None) is not None:
                        batch.settle(req, None, failure)
        finally:
            del waiters[fut]
            for req in range(first, first + n):
                pending.pop(req, None)
            self._pending_bytes -= size
        if batch.errors:
            if not return_exceptions:
                raise batch.errors[min(batch.errors)]
            results = list(batch.results)
            for i, err in batch.errors.items():
                results[i] = err
            return results
        return batch.results

    async def read(self, fn: Callable[[Any], T], *, timeout: float | None = None) -> T:
        """Run ``fn(state_machine)`` at a linearizable point (ReadIndex, or a lease read when
        configured) and return its result. Served on followers too.

        Reads asked before the loop's next turn share one read index (one heartbeat round, or
        one request to the leader). Raises :class:`ProposalDropped` at once when
        ``max_pending_reads`` reads already wait."""
        self._check_open()
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        ctx = self._reads.add(fn, fut, self.id)
        if ctx is not None:  # a new group of reads, asked of the core at the loop's next turn
            self._queue.put_nowait((_READ, ctx))
        result: T = await self._await(fut, timeout, "read")
        return result

    async def add_member(
        self, node_id: str, address: str, *, voter: bool = False, timeout: float | None = None
    ) -> None:
        """Add a learner (or, with ``voter=True``, a voter) at ``address``; returns once the
        change is committed. Leader only."""
        kind = ConfChangeType.ADD_VOTER if voter else ConfChangeType.ADD_LEARNER
        await self._conf_change(ConfChange(kind, node_id, address.encode()), timeout)

    async def promote(self, node_id: str, *, timeout: float | None = None) -> None:
        """Make learner ``node_id`` a voter; returns once committed. Leader only."""
        await self._conf_change(ConfChange(ConfChangeType.PROMOTE, node_id), timeout)

    async def remove_member(self, node_id: str, *, timeout: float | None = None) -> None:
        """Remove ``node_id`` (voter or learner); returns once committed. Leader only."""
        await self._conf_change(ConfChange(ConfChangeType.REMOVE, node_id), timeout)

    async def transfer_leadership(self, target: str | None = None, *, timeout: float | None = None) -> str:
        """Hand leadership to ``target`` (default: the most caught-up other voter) and wait
        until it leads. Leader only. Returns the new leader's id."""
        self._check_open()
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((_TRANSFER, target, fut))
        chosen: str = await self._await(fut, timeout, "transfer")
        limit = timeout if timeout is not None else 2 * self.config.election_seconds()[1]
        return await self.wait_for_leader(limit, leader=chosen)

    async def _conf_change(self, change: ConfChange, timeout: float | None) -> None:
        self._check_open()
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((_CONF, change, fut))
        await self._await(fut, timeout, "membership change")

    async def _await(self, fut: asyncio.Future[Any], timeout: float | None, what: str) -> Any:
        limit = timeout if timeout is not None else self._default_timeout
        waiters = self._deadlines.add(asyncio.get_running_loop(), fut, limit, what)
        try:
            return await fut
        finally:
            waiters.pop(fut, None)

    def _check_open(self) -> None:
        if self._failure is not None:
            raise ClosedError(f"node {self.id} has stopped: {self._failure}") from self._failure
        if self._closed or self._core is None:
            raise ClosedError(f"node {self.id} is not running")

    def _require_core(self) -> Raft:
        if self._core is None:
            raise ClosedError(f"node {self.id} is not started")
        return self._core

    # ------------------------------------------------------------------ transport callbacks

    def on_messages(self, sender: str, messages: Sequence[Message]) -> None:
        """Transport callback: queue messages for the loop."""
        self._queue.put_nowait((_MSGS, sender, messages))

    def on_unreachable(self, peer: str) -> None:
        """Transport callback: ``peer`` could not be reached."""
        self._queue.put_nowait((_UNREACHABLE, peer))

    def on_removed(self, peer: str, index: int) -> None:
        """Transport callback: ``peer`` refused our messages, saying that the committed change
        at ``index`` removed this node."""
        self._queue.put_nowait((_REMOVED, peer, index))

    def on_snapshot_status(self, peer: str, ok: bool) -> None:
        """Transport callback: a snapshot to ``peer`` was delivered or failed."""
        self._queue.put_nowait((_SNAP_STATUS, peer, ok))
        if self._listeners:
            self._emit(SnapshotSent(self.id, self._core.term if self._core is not None else 0, peer, ok))

    # ------------------------------------------------------------------ the loop

    async def _ticker(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self.config.tick_interval
        next_at = loop.time()
        while True:
            next_at += interval
            delay = next_at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                next_at = loop.time()  # fell behind: do not burst ticks
            self._queue.put_nowait((_TICK,))

    async def _run(self) -> None:
        core = self._require_core()
        queue = self._queue
        listeners = self._listeners  # mutated in place by add_listener/remove_listener
        carry = self._carry
        loop = asyncio.get_running_loop()
        try:
            while True:
                if carry:
                    # Proposals left over from the last turn: do not wait for more input, but
                    # yield once, so the ticker and the transport get their share of the loop.
                    await asyncio.sleep(0)
                    batch = []
                else:
                    batch = [await queue.get()]
                # Take what is queued, but no more appended entries than one turn may persist:
                # the rest (in order) waits for the next turn.
                received = 0
                cap = self._turn_cap
                while not queue.empty():
                    ev = queue.get_nowait()
                    batch.append(ev)
                    if ev[0] == _MSGS:
                        received += sum(len(m.entries) for m in ev[2])
                        if received >= cap:
                            break
                self._wake_queued = False  # if a wake-up item is left, it only costs a turn
                t0 = loop.time()
                for ev in batch:
                    kind = ev[0]
                    if kind == _STOP:
                        await self._drain_writes()  # never abandon the leader's own write
                        return
                    if kind != _PROPOSE:
                        self._handle(core, ev)
                        if listeners:
                            self._observe(core)
                taken = 0
                if carry:
                    proposals = self._take_proposals()
                    taken = len(proposals)
                    self._propose_batch(core, proposals)
                await self._process_ready(core)
                if taken or received:
                    self._adapt_turn(max(taken, received), loop.time() - t0)
                if self._compacted:
                    self._free_compacted()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self._failure = exc
            self._subscriptions.end()  # no leader work on a stopped node
            self.log.exception("the node's loop failed; the node has stopped")
            self._fail_all(ClosedError(f"node {self.id} stopped: {exc}"))
            raise

    def _handle(self, core: Raft, ev: tuple[Any, ...]) -> None:
        kind = ev[0]
        if kind == _TICK:
            core.tick()
            if self._snap_retry is not None:
                self._retry_snapshot()
            self._sweep_in -= 1
            if self._sweep_in <= 0:  # forget what nobody waits for any more (lost answers)
                self._sweep_in = self.config.election_ticks
                self._forwards.sweep(self._pending)
                self._reads.sweep()
        elif kind == _MSGS:
            for m in ev[2]:
                try:
                    core.step(m)
                except PhalanxError as exc:
                    self.log.warning("rejected a message from %s: %s", ev[1], exc)
        elif kind == _READ:
            ctx = ev[1]
            if self._reads.take(ctx):
                try:
                    core.read_index(ctx)
                except NotLeader as exc:
                    if not self.config.forward_proposals:
                        self._reads.fail(ctx, exc)
                    # else no leader known: asked again once one is (_reissue_reads)
                except NotApplied as exc:
                    self._reads.fail(ctx, exc)
        elif kind == _CONF:
            if core.is_leader and not core.ready_for_conf_change:
                # Transient: a new leader's first commit, or the previous change, is on its way.
                self._deferred_conf.append((ev[1], ev[2]))
            else:
                self._start_conf_change(core, ev[1], ev[2])
        elif kind == _TRANSFER:
            target, fut = ev[1], ev[2]
            try:
                target = target or self._best_transferee(core)
                core.transfer_leadership(target)
            except PhalanxError as exc:
                _set_exc(fut, exc)
            else:
                _set_result(fut, target)
        elif kind == _UNREACHABLE:
            core.report_unreachable(ev[1])
        elif kind == _SNAP_STATUS:
            core.report_snapshot(ev[1], ev[2])
        elif kind == _PERSISTED:
            core.persisted(ev[1], ev[2])
        elif kind == _WRITE_FAILED:
            raise ev[1]
        elif kind == _REMOVED:
            self._on_removed(core, ev[1], ev[2])
        elif kind == _SNAP_BUILT:
            self._snapshot_built(core, ev[1], ev[2])

    def _on_removed(self, core: Raft, peer: str, index: int) -> None:
        """Believe ``peer`` unless this node knows a configuration, from ``index`` on, that
        includes it (it was added again), or knows none at all (it is joining)."""
        conf = core.conf
        if self._removed_at is not None or not conf.members():
            return
        if core.confs.last_index >= index and conf.is_member(self.id):
            return
        self._removed_at = index
        self.log.error(
            "%s says this node was removed from the cluster by the change at index %d; it should be "
            "stopped (or added again)",
            peer,
            index,
        )
        if self._listeners:
            self._emit(RemovedFromCluster(self.id, core.term, index, peer))

    def _start_conf_change(self, core: Raft, change: ConfChange, fut: asyncio.Future[Any]) -> None:
        if fut.done():
            return
        try:
            term, index = core.propose_conf_change(change)
        except PhalanxError as exc:
            _set_exc(fut, exc)
        else:
            self._conf_waiters[index] = (term, fut)

    def _retry_deferred_conf(self, core: Raft) -> None:
        """Start deferred membership changes once the leader can accept them, one at a time;
        fail them at once if this node stopped leading."""
        while self._deferred_conf and (core.ready_for_conf_change or not core.is_leader):
            change, fut = self._deferred_conf.pop(0)
            self._start_conf_change(core, change, fut)

    def _best_transferee(self, core: Raft) -> str:
        candidates = [
            (pr.match, nid) for nid, pr in core.prs.items() if nid != self.id and nid in core.conf.voters
        ]
        if not core.is_leader:
            raise NotLeader(core.leader)
        if not candidates:
            raise ProposalDropped("no other voter to transfer leadership to")
        return max(candidates)[1]

    def _adapt_turn(self, work: int, seconds: float) -> None:
        """Adjust the proposals taken per turn so that a turn lasts at most about two ticks."""
        cap = self._turn_cap
        if seconds > 2 * self.config.tick_interval:
            self._turn_cap = max(_TURN_MIN_PROPOSALS, min(cap, work) // 2)
        elif work >= cap:
            self._turn_cap = min(_TURN_MAX_PROPOSALS, cap + cap // 4)

    def _take_proposals(self) -> list[tuple[int, bytes]]:
        """The oldest queued proposals, within one turn's bounds (at least one)."""
        carry = self._carry
        cap = min(self._turn_cap, _TURN_MAX_PROPOSALS)
        if len(carry) <= cap and sum(map(len, map(itemgetter(1), carry))) <= _TURN_MAX_BYTES:
            out = list(carry)
            carry.clear()
            return out
        out = []
        size = 0
        while carry and len(out) < cap and size < _TURN_MAX_BYTES:
            item = carry.popleft()
            out.append(item)
            size += len(item[1])
        return out

    def _propose_batch(self, core: Raft, proposals: list[tuple[int, bytes]]) -> None:
        # Proposals whose caller gave up (timed out, cancelled) go in too: their outcome was
        # unknown to the caller, and filtering them out costs more than applying them.
        ctx = self._forwards.new_context()
        try:
            placed = core.propose_batch(list(map(itemgetter(1), proposals)), context=ctx)
        except NotLeader as exc:
            if not self.config.forward_proposals:
                self._settle_all(proposals, exc)
                return
            # No leader known (an election is on): they wait for one, within their deadline.
            self._leaderless.update(proposals)
            return
        except NotApplied as exc:
            self._settle_all(proposals, exc)
            return
        if placed is not None:  # on the leader: at consecutive indexes, in order
            term, first = placed
            self._placed.append((first, term, proposals))
        else:  # forwarded: the leader answers with a Placement for ctx
            leader = core.leader or ""
            self._forwards.sent(ctx, Forward(proposals, core.log.committed + 1, core.term, leader, False))

    def _propose_leaderless(self, core: Raft) -> None:
        """A leader is known again: propose what waited for one (callers still waiting only:
        the others were told it was not proposed)."""
        held, self._leaderless = self._leaderless, {}
        pending = self._pending
        live = [(req, data) for req, data in held.items() if req in pending]
        if live:
            self._propose_batch(core, live)

    def _not_proposed(self, reqs: Iterable[int]) -> bool:
        """Forget requests that still wait for a leader (their caller gave up); True if every
        one of them did (none was ever proposed)."""
        held = self._leaderless
        return all([held.pop(req, None) is not None for req in reqs])

    def _settle_all(self, proposals: Iterable[tuple[int, bytes]], exc: BaseException) -> None:
        """Fail every proposal in ``proposals`` whose caller still waits with ``exc``."""
        pending = self._pending
        for req, _ in proposals:
            w = pending.pop(req, None)
            if w is not None:
                _settle(w, req, None, exc)

    def _on_placement(self, core: Raft, p: Placement) -> None:
        """The leader's answer to one of this node's forwards (or to a retry)."""
        fwd = self._forwards.answered(p.context)
        if fwd is None:
            return
        self._answering.add(fwd.leader)
        outcome = p.outcome
        if outcome is PlacementOutcome.PLACED:
            self._place(core, p.index, p.term, fwd.proposals)
        elif outcome is PlacementOutcome.NOT_LEADER:
            self._forwards.refused(fwd)  # appended nowhere by this attempt: again, next term
        elif outcome is PlacementOutcome.DROPPED:
            self._settle_all(fwd.proposals, ProposalDropped("the leader refused the forwarded proposal"))
        else:
            self._settle_all(
                fwd.proposals,
                OutcomeUnknown(
                    "the leader could not tell whether an earlier copy of the forwarded proposal "
                    "commits (its log is compacted past it); outcome unknown"
                ),
            )

    def _place(self, core: Raft, first: int, term: int, proposals: list[tuple[int, bytes]]) -> None:
        """Proposals sit at consecutive indexes from ``first``, in ``term``: wait for that
        entry to commit, or settle them at once if this node applied past it already."""
        applied = core.log.applied
        if first > applied:
            self._placed.append((first, term, proposals))
            return
        # Applied already: an entry of ours would have settled its caller (by its envelope).
        # Those still waiting found another entry there (overwritten: not applied), or this
        # node got that index in a snapshot (outcome unknown).
        split = min(len(proposals), applied - first + 1)
        for index, (req, _) in enumerate(proposals[:split], first):
            w = self._pending.pop(req, None)
            if w is None:
                continue
            held = core.log.term(index)
            exc: PhalanxError
            if held is not None and held != term and index > core.log.snap_index:
                exc = NotApplied(f"entry {index} was overwritten by a new leader; not applied")
            else:
                exc = OutcomeUnknown(f"entry {index} reached this node in a snapshot; outcome unknown")
            _settle(w, req, None, exc)
        if split < len(proposals):
            self._placed.append((first + split, term, proposals[split:]))

    def _renew_forwards(self, core: Raft) -> None:
        """Once a leader of a newer term is known: send again the forwards it must see."""
        forwards, leader, term = self._forwards, core.leader, core.term
        assert leader is not None
        may_retry = leader in self._answering
        if not may_retry and self._probed != (leader, term) and forwards.retries_waiting(term):
            # Retries go only to a leader known to check them for earlier copies: ask it an
            # empty forward first (a leader of an earlier release would not answer it).
            self._probed = (leader, term)
            ctx = forwards.new_context()
            with contextlib.suppress(NotApplied):
                core.propose_batch((), context=ctx)
                forwards.sent(ctx, Forward([], core.log.committed + 1, term, leader, False))
        due = forwards.due(term, may_retry)
        pending = self._pending
        for fwd in due:
            live = [(req, data) for req, data in fwd.proposals if req in pending]
            if not live:
                continue
            if not fwd.retry:  # refused, appended nowhere: forward it as it was
                self._propose_batch(core, live)
                continue
            for item in live:
                ctx = self._forwards.new_context()
                try:
                    core.repropose(item[1], ctx, fwd.since)
                except NotApplied:
                    # No leader after all (it changed within this turn): next term.
                    self._forwards.refused(Forward([item], fwd.since, term, leader, True))
                else:
                    self._forwards.sent(ctx, Forward([item], fwd.since, term, leader, True))

    def _covered_by_snapshot(self, index: int) -> None:
        """A snapshot from the leader replaced this node's log up to ``index``: proposals
        placed there have an unknown outcome (their entries are not applied one by one)."""
        kept = []
        for first, term, proposals in self._placed:
            n = max(0, min(len(proposals), index - first + 1))  # how many the snapshot covers
            if n:
                self._settle_all(
                    proposals[:n],
                    OutcomeUnknown(f"the entries up to {index} arrived in a snapshot; outcome unknown"),
                )
            if n < len(proposals):
                kept.append((first + n, term, proposals[n:]))
        self._placed = kept

    def _check_placed(self, committed: Sequence[Entry]) -> None:
        """Fail this node's proposals whose entries a new leader overwrote, as ``committed``
        (consecutive entries) reaches them; forget the batches it passes.

        A proposal's entry survived if the committed entry at its index has the term it was
        appended in (one leader per term, which never overwrites its own entries). Terms never
        decrease along the log, so a batch whose first and last committed entries have its
        term survived whole: the check costs two comparisons per batch, not one per entry.
        """
        lo, hi = committed[0].index, committed[-1].index
        kept = []
        # Every batch, not only the oldest: after losing and regaining leadership this node
        # may have placed a batch below an older one (its log was truncated in between).
        for batch in self._placed:
            first, term, proposals = batch
            last = first + len(proposals) - 1
            a, b = max(first, lo), min(last, hi)
            if a <= b and (committed[a - lo].term != term or committed[b - lo].term != term):
                for index in range(a, b + 1):
                    e = committed[index - lo]
                    if e.term != term:
                        req = proposals[index - first][0]
                        waiter = self._pending.pop(req, None)
                        if waiter is not None:
                            exc = NotApplied(f"entry {index} was overwritten by a new leader; not applied")
                            _settle(waiter, req, None, exc)
            if last > hi:
                kept.append(batch)
        self._placed = kept

    async def _process_ready(self, core: Raft) -> None:
        while core.has_ready():
            rd = core.ready()
            # A leader's appends may leave before its own write (thesis §10.2.1): the core
            # counts its own copy once advance() reports it durable.
            early = rd.send_before_persist
            if early:
                if core.conf is not self._peers_conf:
                    self._update_peers(core.conf)  # membership takes effect when appended
                if rd.messages:
                    assert self._transport is not None
                    self._transport.send(rd.messages)
            if rd.snapshot is not None:
                # Restore before saving: a snapshot the state machine cannot read stops the
                # node with its store as it was, rather than saved and unreadable at restart.
                await self._restore(rd.snapshot)
            hs = rd.hard_state
            # A leader's own entries (its term and vote already durable, so only entries and
            # the commit index to write) are written in the background: the loop goes on
            # stepping, ticking and sending meanwhile, and the core counts them once the
            # _PERSISTED event reports them durable.
            behind = early and bool(rd.entries)
            if behind:
                self._write_behind(rd.entries, hs if hs is not None else self._unsaved_hs)
                self._unsaved_hs = None
            elif (
                rd.entries
                or rd.snapshot is not None
                or (hs is not None and (hs.term, hs.vote) != self._saved_tv)
            ):
                await self._drain_writes()  # the store applies writes in order
                await self._persist(rd.entries, hs if hs is not None else self._unsaved_hs, rd.snapshot)
                if hs is not None:
                    self._saved_tv = (hs.term, hs.vote)
                self._unsaved_hs = None
            elif hs is not None:
                # Only the commit index moved: no write, no fsync (it need not be durable; a
                # restart learns it again). The next write carries it along.
                self._unsaved_hs = hs
            if not early:
                if core.conf is not self._peers_conf:
                    self._update_peers(core.conf)  # membership takes effect when appended
                if rd.messages:
                    assert self._transport is not None
                    self._transport.send(rd.messages)
            if rd.snapshot is not None:
                if self._placed:
                    self._covered_by_snapshot(rd.snapshot.meta.index)
                if self._listeners:
                    self._emit(SnapshotRestored(self.id, core.term, rd.snapshot.meta.index, "leader"))
            for placement in rd.placements:  # before applying: the entries may be in this Ready
                self._on_placement(core, placement)
            committed = rd.committed_entries
            if committed:
                if self._placed:
                    self._check_placed(committed)
                self._apply(committed)
            reads = self._reads
            for rs in rd.read_states:
                reads.confirmed(rs.index, rs.context)
            for ctx in rd.dropped_reads:
                reads.fail(ctx, NotLeader(core.leader, "leadership changed before the read was confirmed"))
            core.advance(rd, entries_durable=not behind)
            reads.serve(core.log.applied, self._sm)
            if core.leader is not None and len(self._forwards):
                self._renew_forwards(core)
            if self._deferred_conf:
                self._retry_deferred_conf(core)
            if core.leader != self._last_leader:
                self._last_leader = core.leader
                self._leader_changed.set()
                self.log.info("leader is now %s", core.leader)
                if core.leader is not None and len(self._reads):
                    self._reissue_reads(core)
                if core.leader is not None and self._leaderless:
                    self._propose_leaderless(core)
            log_ = core.log
            if committed:
                self._log_bytes += sum(map(len, map(_data_of, committed)))
            if rd.snapshot is not None:
                self._log_bytes = 0
            # Snapshot only entries this node holds durably (the background write may lag).
            if (
                log_.applied - log_.snap_index >= self._snapshot_due or self._log_bytes >= self._log_bytes_due
            ) and log_.snap_index < log_.applied < log_.unstable:
                self._take_snapshot(core)
            if (
                self._behind_bytes >= _WRITE_BEHIND_MAX_BYTES
                or len(self._behind) >= _WRITE_BEHIND_MAX_ENTRIES
            ):
                await self._drain_writes()  # the disk is the bottleneck: stop taking more

    def _write_behind(self, entries: Sequence[Entry], hard_state: HardState | None) -> None:
        """Queue the leader's own ``entries`` (and ``hard_state``) for the background writer."""
        self._behind.extend(entries)
        self._behind_bytes += sum(map(len, map(_data_of, entries)))
        if hard_state is not None:
            self._behind_hs = hard_state
        self._start_writer()

    def _start_writer(self) -> None:
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(
                self._run_writer(), name=f"phalanx-writer-{self.id}"
            )

    async def _run_writer(self) -> None:
        """Write what :meth:`_write_behind` queued, all of it per write (one fsync), until
        nothing is left; report each write to the loop. A write that fails for good stops
        the node (through the loop, which owns the core)."""
        try:
            while self._behind or self._behind_snap is not None:
                snap, self._behind_snap = self._behind_snap, None
                if snap is not None:
                    # Entries up to the snapshot are durable already (the loop took it only
                    # then); newer ones may be stored before or after it.
                    await self._save_local_snapshot(snap)
                if not self._behind:
                    continue
                entries, hs = self._behind, self._behind_hs
                self._behind, self._behind_hs, self._behind_bytes = [], None, 0
                await self._persist(entries, hs, None)
                last = entries[-1]
                self._queue.put_nowait((_PERSISTED, last.index, last.term))
        except Exception as exc:
            self._behind.clear()
            self._behind_bytes = 0
            self._queue.put_nowait((_WRITE_FAILED, exc))
        finally:
            self._writer = None

    async def _save_local_snapshot(self, snap: Snapshot) -> None:
        """Store a snapshot this node took. A full disk, or a state too big for the store,
        skips it rather than stopping the node: nothing was written, the store keeps every
        entry the snapshot covers (a restart replays them), and only the log stays longer.
        After a full disk the same snapshot is tried again later (unless a newer one is taken
        first); a snapshot too big is not, the next one is taken when due. Any other storage
        failure stops the node, as every failed write does."""
        try:
            await self._storage.save_snapshot(snap)
        except StorageError as exc:
            if self._storage.failed or self._closed:
                raise
            full = not self._storage.healthy
            delay = self._snap_retry_delay
            self.log.error(
                "could not store the snapshot at index %d (%d bytes): %s; the log is not compacted%s",
                snap.meta.index,
                len(snap.data),
                exc,
                f", trying again in {delay:g} s" if full else "",
            )
            if full:
                self._healthy = False
                if self._behind_snap is None:  # else a newer snapshot supersedes it
                    self._snap_retry = snap
                    self._snap_retry_at = asyncio.get_running_loop().time() + delay
                    self._snap_retry_delay = min(delay * 2, _SNAP_RETRY_MAX)
            return
        if self._snap_retry_delay > _SNAP_RETRY_MIN:
            self.log.warning("stored the snapshot at index %d; the log is compacted again", snap.meta.index)
        self._snap_retry_delay = _SNAP_RETRY_MIN
        if self._storage.healthy:
            self._healthy = True
        if self._listeners:
            term = self._core.term if self._core is not None else snap.meta.term
            self._emit(SnapshotTaken(self.id, term, snap.meta.index, len(snap.data)))

    def _retry_snapshot(self) -> None:
        """Hand a snapshot a full disk refused to the writer again, once its delay passed."""
        snap = self._snap_retry
        if snap is None or asyncio.get_running_loop().time() < self._snap_retry_at:
            return
        self._snap_retry = None
        if self._behind_snap is None:
            self._behind_snap = snap
            self._start_writer()

    async def _drain_writes(self) -> None:
        """Wait until the background writer has written everything queued."""
        while self._writer is not None:
            await asyncio.shield(self._writer)

    async def _persist(
        self, entries: Sequence[Entry], hard_state: HardState | None, snapshot: Snapshot | None
    ) -> None:
        delay = 0.05
        while True:
            try:
                await self._storage.save(hard_state=hard_state, entries=entries, snapshot=snapshot)
            except StorageError as exc:
                if self._storage.healthy or self._storage.failed or self._closed:
                    raise  # not a full disk: the store refuses writes for good
                if self._healthy:
                    self.log.error(
                        "storage refuses writes (%s); this node's copy counts for nothing until it recovers",
                        exc,
                    )
                self._healthy = False
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            if not self._healthy:
                self.log.warning("storage writes succeed again")
            self._healthy = True
            return

    def _take_snapshot(self, core: Raft) -> None:
        """Snapshot the state machine at the applied index and compact the log up to it: at
        once with ``snapshot()``, or, if the state machine offers ``snapshot_later()``, from a
        copy encoded in a worker thread while the loop goes on (one build at a time)."""
        if self._snap_building:
            return
        snapshot_later = getattr(self._sm, "snapshot_later", None)
        later = snapshot_later() if snapshot_later is not None else None
        if later is None:
            self._compact(core, core.log.applied, self._sm.snapshot())
            return
        # A copy is taken now; it is encoded in a worker thread, and the log compacted up to
        # this index once the loop gets the bytes (_SNAP_BUILT).
        self._snap_building = True
        index = core.log.applied

        async def build() -> None:
            try:
                result: bytes | BaseException = await asyncio.to_thread(later)
            except Exception as exc:
                result = exc
            self._queue.put_nowait((_SNAP_BUILT, index, result))

        self._snap_task = asyncio.get_running_loop().create_task(build(), name=f"phalanx-snapshot-{self.id}")

    def _snapshot_built(self, core: Raft, index: int, result: bytes | BaseException) -> None:
        self._snap_building = False
        self._snap_task = None
        if isinstance(result, BaseException):
            self.log.error("the state machine could not build its snapshot at index %d: %r", index, result)
            self._snapshot_due = self._next_snapshot_due()  # try again later, not at once
            self._log_bytes = 0
            return
        if index > core.log.snap_index:  # else a snapshot from the leader superseded it
            self._compact(core, index, result)

    def _compact(self, core: Raft, index: int, data: bytes) -> None:
        """Compact the core's log up to ``index`` with the snapshot ``data``; the writer task
        stores the snapshot and deletes the entries it covers, so the loop does not wait (a
        large delete takes tens of milliseconds). The next one is due after another
        ``snapshot_every`` entries plus a random quarter of that, so that members do not all
        compact at the same moment."""
        self._behind_snap = snap = core.compact(index, data, release=self._compacted.append)
        self._log_bytes = 0
        self._log_bytes_due = self._next_bytes_due(len(snap.data))
        self._snap_retry = None  # a snapshot a full disk refused is superseded
        self._snapshot_due = self._next_snapshot_due()
        self._start_writer()

    def _free_compacted(self) -> None:
        """Free up to :data:`_FREE_STEP` of the entries compactions dropped (from the end of
        each list, so that the lists are never copied)."""
        lists = self._compacted
        old = lists[-1]
        del old[-_FREE_STEP:]
        if not old:
            lists.pop()

    def _next_bytes_due(self, last_size: int) -> int:
        """Bytes of log before the next snapshot: the larger of ``snapshot_bytes`` and the
        last snapshot's size, plus a random quarter (so members do not all compact at once)."""
        base = max(self._snapshot_bytes, last_size)
        return base + self._snap_rng.randrange(base // 4 + 1)

    def _next_snapshot_due(self) -> int:
        """Applied entries between two snapshots: ``snapshot_every`` plus a random quarter."""
        return self._snapshot_every + self._snap_rng.randrange(self._snapshot_every // 4 + 1)

    def _apply(self, committed: Sequence[Entry]) -> None:
        """Apply committed entries in order; give this node's proposers their outcomes."""
        sm_apply, pending, own, other = self._sm.apply, self._pending, self._own, self._other
        start, other_start = len(own) + 8, len(other) + 8
        for e in committed:
            if e.type is not EntryType.NORMAL:
                self._apply_other(e)
                continue
            data = e.data
            # Envelopes recognised by their prefix, as unwrap would find them: this node's
            # own, then those of the last other proposer seen (a follower's leader).
            mine = data.startswith(own) and len(data) >= start
            if mine:
                command = data[start:]
            elif data.startswith(other) and len(data) >= other_start:
                command = data[other_start:]
            else:
                origin, _, command = _envelope.unwrap(data)
                if origin is not None:
                    other = self._other = _envelope.prefix(origin)
                    other_start = len(other) + 8
            try:
                result: Any = sm_apply(command)
                error: BaseException | None = None
            except Exception as exc:
                result, error = None, exc
                self.log.warning("state machine raised on entry %d: %r", e.index, exc)
            if mine:
                req = _unpack_request(data, start - 8)[0]
                waiter = pending.pop(req, None)
                if waiter is not None:
                    _settle(waiter, req, result, error)

    def _apply_other(self, e: Entry) -> None:
        """Apply a membership change (a new leader's empty entry needs nothing)."""
        if e.type is EntryType.CONF:
            change, conf = decode_conf(e.data)
            if change is not None:
                self._note_removal(e.index, change)
            if self._listeners:
                term = self._core.term if self._core is not None else e.term
                voters, learners = tuple(sorted(conf.voters)), tuple(sorted(conf.learners))
                self._emit(MembershipChanged(self.id, term, e.index, change, voters, learners))
            w = self._conf_waiters.pop(e.index, None)
            if w is not None:
                if w[0] == e.term:
                    _set_result(w[1], None)
                else:
                    _set_exc(w[1], NotApplied("membership change overwritten by a new leader"))

    def _note_removal(self, index: int, change: ConfChange) -> None:
        """Keep the transport's list of removed members (committed removals only: a change
        that is merely appended may still be overwritten)."""
        removed = self._removed_members
        if change.type is ConfChangeType.REMOVE:
            removed[change.node_id] = index
        elif removed.pop(change.node_id, None) is None:
            return
        if self._transport is not None:
            self._transport.set_removed(removed)

    def _reissue_reads(self, core: Raft) -> None:
        """Ask the new leader again for every read not yet confirmed: one forwarded to a
        leader that died is never answered. Reads are side-effect free, so asking twice is
        harmless (the first confirmation serves it; a later one finds it gone)."""
        for ctx in self._reads.unconfirmed():
            try:
                core.read_index(ctx)
            except NotApplied as exc:
                self._reads.fail(ctx, exc)

    async def _restore_state(self, data: bytes) -> None:
        """Restore the state machine from snapshot ``data``: decoded in a worker thread if it
        offers ``restore_later`` (the loop goes on; this node's Raft work waits), else on the
        loop."""
        restore_later = getattr(self._sm, "restore_later", None)
        decode = restore_later(data) if restore_later is not None else None
        if decode is None:
            self._sm.restore(data)
        else:
            install = await asyncio.to_thread(decode)
            install()

    async def _restore(self, snap: Snapshot) -> None:
        try:
            await self._restore_state(snap.data)
        except Exception as exc:
            raise ProtocolError(
                f"{self.id}: the state machine cannot restore the snapshot at index {snap.meta.index} "
                f"(term {snap.meta.term}) sent by {self._core.leader if self._core else None}: {exc!r}; "
                "the node stops without saving it"
            ) from exc

    def _update_peers(self, conf: ConfState) -> None:
        self._peers_conf = conf
        if self._transport is None:
            return
        if not conf.members():
            # A joining node knows no configuration yet: talk to the members it was given.
            self._transport.set_peers(self._initial_peers)
            return
        peers = {nid: conf.context(nid).decode(errors="replace") for nid in conf.members() if nid != self.id}
        self._transport.set_peers(peers)

    def _fail_all(self, exc: BaseException) -> None:
        waiting = list(self._pending.items())
        self._pending.clear()
        for req, w in waiting:
            _settle(w, req, None, exc)
        self._carry.clear()
        self._leaderless.clear()
        self._forwards.clear()
        self._reads.fail_all(exc)
        for _, fut3 in list(self._conf_waiters.values()):
            _set_exc(fut3, exc)
        self._conf_waiters.clear()
        for _, fut4 in self._deferred_conf:
            _set_exc(fut4, exc)
        self._deferred_conf.clear()
        self._leader_changed.set()


def _set_result(fut: asyncio.Future[Any], value: Any) -> None:
    if not fut.done():
        fut.set_result(value)


def _set_exc(fut: asyncio.Future[Any], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)
