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
from collections.abc import Mapping, Sequence
from types import TracebackType

from phalanx_aio._deadlines import Deadlines
from phalanx_aio._entry_batch import BatchCache
from phalanx_aio.core.config import Config
from phalanx_aio.core.raft import Raft, Role, bootstrap_state
from phalanx_aio.core.types import (
    Message,
)
from phalanx_aio.errors import (
    ClosedError,
    LocalError,
    Timeout,
)
from phalanx_aio.node import _envelope
from phalanx_aio.node._attach import attach_state
from phalanx_aio.node._items import (
    STOP,
    TICK,
    WAKE,
    Item,
    Messages,
    Removed,
    SnapshotStatus,
    Unreachable,
)
from phalanx_aio.node._leader_work import Subscriptions
from phalanx_aio.node._observe import EventSource
from phalanx_aio.node._operations import Operations
from phalanx_aio.node._reads import Reads
from phalanx_aio.node._shutdown import Shutdown
from phalanx_aio.node._state import LatencyObserver, NodeLogger
from phalanx_aio.node.events import (
    EventListener,
    SnapshotRestored,
    SnapshotSent,
)
from phalanx_aio.node.state_machine import StateMachine
from phalanx_aio.node.status import NodeStatus
from phalanx_aio.storage.base import Storage
from phalanx_aio.transport.base import Transport

__all__ = ["NodeStatus", "RaftNode"]

log = logging.getLogger("phalanx_aio.node")


class RaftNode(Operations, Shutdown, EventSource):
    """One member of a Raft cluster, embedded in an asyncio application.

    Use it as ``async with RaftNode(...) as node:`` (or ``await node.start()`` and
    ``await node.aclose()``). ``peers`` (id to address) and ``address`` make up the first
    configuration of a brand-new cluster; on a restart the configuration comes from storage.
    With ``join=True`` a brand-new node starts empty and waits to be added by the cluster.
    With ``founding_guard=True``, a node that creates its store and founds the cluster (a
    founder's first start, or a member that lost its data being founded again by mistake)
    votes only for candidates whose log is still at the founding entry until it learns of a
    later commit: what it may have forgotten cannot help a candidate that lacks committed
    entries win. The price: a founder that starts late and never hears from the first leader
    cannot help elect the next one. ``phalanx-aio serve --bootstrap`` turns it on only when
    no leader answered its check of the peers.
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
        founding_guard: bool = False,
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
        # The last batch of entries encoded, shared by this node's transport and store (each
        # node its own): a leader encodes a batch once for every follower and for its disk.
        self._batch_cache = BatchCache()
        self._transport = transport
        self._join = join
        self._founding_guard = founding_guard
        base_seed = seed if seed is not None else int.from_bytes(os.urandom(8), "big")
        self._init_snapshots(snapshot_every, snapshot_bytes, base_seed)
        self._init_proposals(node_id)
        self._init_writer()
        self._init_membership()
        self._max_pending = max_pending
        # Bytes of the commands whose proposers wait (propose, propose_many): past
        # max_pending_bytes a new proposal is refused, unless nothing waits (one always goes).
        self._max_pending_bytes = max_pending_bytes
        self._pending_bytes = 0
        self._default_timeout = default_timeout
        self._rng = random.Random(base_seed)
        self._core: Raft | None = None
        self._queue: asyncio.Queue[Item] = asyncio.Queue()
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
        self._sweep_in = 0  # ticks until forwards and reads nobody waits for are forgotten
        self._deadlines = Deadlines(
            lambda what, limit: Timeout(
                f"{node_id}: {what} not finished within {limit} s; its outcome is unknown"
            )
        )
        self._reads = Reads(self._nonce, max_pending_reads)
        self._leader_changed = asyncio.Event()
        self._last_leader: str | None = None
        self._closed = False
        self._closing = False
        self._hand_over_on_close = hand_over_on_close
        self._failure: BaseException | None = None
        self._healthy = True
        self.log = NodeLogger(log, {"node": self})
        # Event listeners (see events.py); events are built only while this list is non-empty.
        self._listeners: list[EventListener] = [on_event] if on_event is not None else []
        self._latency: LatencyObserver | None = None  # set_latency_observer
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
        self._storage.batch_cache = self._batch_cache
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
        self._core = Raft(
            self.id,
            self.config,
            self._rng,
            state,
            clock=lambda: loop_time() / interval,
            founded_now=self._founding_guard and stored.created and not self._join,
        )
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
        # Removed members are part of the configuration (snapshots included): known at once.
        self._note_removals(self._core.confs.at(self._core.log.committed))
        self._transport.batch_cache = self._batch_cache
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
            voters_outgoing=tuple(sorted(st.conf.voters_outgoing)),
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
        self._queue.put_nowait(Messages(sender, messages))

    def on_unreachable(self, peer: str) -> None:
        """Transport callback: ``peer`` could not be reached."""
        self._queue.put_nowait(Unreachable(peer))

    def on_removed(self, peer: str, index: int) -> None:
        """Transport callback: ``peer`` refused our messages, saying that the committed change
        at ``index`` removed this node."""
        self._queue.put_nowait(Removed(peer, index))

    def on_snapshot_status(self, peer: str, ok: bool) -> None:
        """Transport callback: a snapshot to ``peer`` was delivered or failed."""
        self._queue.put_nowait(SnapshotStatus(peer, ok))
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
            self._queue.put_nowait(TICK)

    async def _run(self) -> None:
        """The loop: take what is queued, hand each item to the core, propose what waits, then
        persist, send and apply what the core produced (:meth:`_process_ready`)."""
        core = self._require_core()
        listeners = self._listeners  # mutated in place by add_listener/remove_listener
        carry = self._carry
        self._item_handlers = self._handlers()
        loop = asyncio.get_running_loop()
        try:
            while True:
                batch, received = await self._next_items()
                t0 = loop.time()
                for item in batch:
                    if item is STOP:
                        await self._drain_writes()  # never abandon the leader's own write
                        return
                    if item is not WAKE:
                        self._handle(core, item)
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

    async def _next_items(self) -> tuple[list[Item], int]:
        """What is queued (waiting for one item, unless proposals are left from the last turn),
        but no more appended entries received than one turn may persist: the rest, in order,
        waits for the next turn. Also how many entries the messages taken carry."""
        queue = self._queue
        if self._carry:
            # Proposals left over from the last turn: do not wait for more input, but yield
            # once, so the ticker and the transport get their share of the loop.
            await asyncio.sleep(0)
            batch: list[Item] = []
        else:
            batch = [await queue.get()]
        received = 0
        cap = self._turn_cap
        while not queue.empty():
            item = queue.get_nowait()
            batch.append(item)
            if type(item) is Messages:
                received += sum(len(m.entries) for m in item.messages)
                if received >= cap:
                    break
        self._wake_queued = False  # if a wake-up item is left, it only costs a turn
        return batch, received
