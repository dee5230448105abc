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
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from operator import attrgetter
from types import TracebackType
from typing import Any, Final, TypeVar

from phalanx_aio._deadlines import Deadlines
from phalanx_aio.core.config import Config
from phalanx_aio.core.membership import ConfChange, ConfChangeType
from phalanx_aio.core.raft import Raft, Role, bootstrap_state
from phalanx_aio.core.types import (
    Message,
)
from phalanx_aio.errors import (
    ClosedError,
    LocalError,
    NotLeader,
    PhalanxError,
    ProposalDropped,
    Timeout,
)
from phalanx_aio.node import _envelope
from phalanx_aio.node._attach import attach_state
from phalanx_aio.node._futures import Batch
from phalanx_aio.node._items import (
    STOP,
    TICK,
    WAKE,
    ConfRequest,
    Item,
    Messages,
    ReadRequest,
    Removed,
    SnapshotStatus,
    TransferRequest,
    Unreachable,
)
from phalanx_aio.node._leader_work import EventStream, LeaderFn, LeaderWork, Subscriptions
from phalanx_aio.node._observe import EventSource
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

T = TypeVar("T")


_COMMAND_TYPES: Final = (bytes, bytearray, memoryview)

_data_of = attrgetter("data")
# The request id of an envelope, packed after the proposer's prefix and read back (_envelope).
_pack_request = _envelope.pack_request
_unpack_request = _envelope.unpack_request


class RaftNode(Shutdown, EventSource):
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

    def set_latency_observer(self, observer: LatencyObserver | None) -> None:
        """Call ``observer(kind, seconds)`` with how long each of these took (``None`` stops):

        * ``"propose"``: a :meth:`propose` or :meth:`propose_many` call that succeeded, from
          the call to its result (committed and applied on this node);
        * ``"storage_save"``: one write of entries and hard state to storage, its fsync
          included (in the loop, or in the background writer);
        * ``"apply"``: applying one batch of committed entries to the state machine (one
          loop turn's worth).

        It runs in the node's tasks and must be quick; what it raises is logged and ignored.
        :class:`~phalanx_aio.observability.NodeMetrics` turns these into histograms."""
        if observer is not None and not callable(observer):
            raise LocalError(f"a latency observer must be callable, not {type(observer).__name__}")
        self._latency = observer

    def _report_latency(self, observer: LatencyObserver, kind: str, started: float) -> None:
        try:
            observer(kind, time.perf_counter() - started)
        except Exception:
            self.log.exception("the latency observer raised; ignored")

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
            self._queue.put_nowait(WAKE)
        limit = timeout if timeout is not None else self._default_timeout
        waiters = self._deadlines.add(loop, fut, limit, "proposal")
        observer = self._latency
        started = time.perf_counter() if observer is not None else 0.0
        try:
            result = await fut
        except BaseException as exc:
            if self._leaderless and self._not_proposed((req,)) and isinstance(exc, Timeout):
                raise NotLeader(None, f"{self.id}: no leader known within {limit} s") from None
            raise
        finally:  # an outcome, a timeout or a cancelled caller: forget the request
            del waiters[fut]
            pending.pop(req, None)
            self._pending_bytes -= size
        if observer is not None:
            self._report_latency(observer, "propose", started)
        return result

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
        batch = Batch(first, n, fut)
        own = self._own
        items = [(req, own + _pack_request(req) + bytes(c)) for req, c in enumerate(cmds, first)]
        for req, _ in items:
            pending[req] = batch
        self._carry.extend(items)
        if not self._wake_queued:
            self._wake_queued = True
            self._queue.put_nowait(WAKE)
        limit = timeout if timeout is not None else self._default_timeout
        waiters = self._deadlines.add(loop, fut, limit, f"batch of {n} proposals")
        observer = self._latency
        started = time.perf_counter() if observer is not None else 0.0
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
        if observer is not None:
            self._report_latency(observer, "propose", started)
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
            self._queue.put_nowait(ReadRequest(ctx))
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
        until it leads. Leader only. Returns the new leader's id.

        The core gives a transfer up after an election timeout if the target has not caught
        up by then (a slow disk, a burst of writes); while this node still leads and time is
        left, the transfer is asked again, so a ``timeout`` longer than that is used in full
        rather than spent waiting for a transfer already abandoned. Default: two election
        timeouts."""
        self._check_open()
        loop = asyncio.get_running_loop()
        attempt = 2 * self.config.election_seconds()[1]  # a given-up transfer is over by then
        limit = timeout if timeout is not None else attempt
        deadline = loop.time() + limit
        while True:
            fut: asyncio.Future[Any] = loop.create_future()
            self._queue.put_nowait(TransferRequest(target, fut))
            chosen: str = await self._await(fut, max(deadline - loop.time(), 1e-3), "transfer")
            left = deadline - loop.time()
            try:
                return await self.wait_for_leader(min(attempt, max(left, 1e-3)), leader=chosen)
            except Timeout:
                if loop.time() >= deadline or not self.is_leader:
                    raise Timeout(f"{self.id}: leadership not handed to {chosen} within {limit} s") from None
            target = chosen

    async def change_members(
        self,
        *,
        add: Mapping[str, str] | None = None,
        add_learners: Mapping[str, str] | None = None,
        promote: Iterable[str] = (),
        remove: Iterable[str] = (),
        timeout: float | None = None,
    ) -> None:
        """Change several members in one step (joint consensus, Raft thesis §4.3): add
        voters (``add``: id -> address) and learners (``add_learners``), promote learners,
        remove voters or learners. Leader only.

        When the set of voters changes, the leader first commits the joint configuration
        C_old,new, in which every decision needs a majority of the old voters *and* one of the
        new, then by itself the new configuration; this returns once that is committed. From
        the moment C_old,new is committed the change cannot be undone (every later leader
        completes it), so a leader that is not a voter of the new configuration returns then:
        it goes on replicating until the others stop listening to it, and one of them leads.
        Changes that only touch learners take one entry. Each node may be named once; a voter
        cannot become a learner in one step. Prefer promoting caught-up learners over adding
        voters, as with single changes (a new voter with an empty log slows commits).
        """
        kinds = ConfChangeType
        changes = [ConfChange(kinds.ADD_VOTER, nid, addr.encode()) for nid, addr in (add or {}).items()]
        changes += [ConfChange(kinds.ADD_LEARNER, n, a.encode()) for n, a in (add_learners or {}).items()]
        changes += [ConfChange(kinds.PROMOTE, nid) for nid in promote]
        changes += [ConfChange(kinds.REMOVE, nid) for nid in remove]
        if not changes:
            raise LocalError("change_members needs at least one change")
        await self._conf_change(tuple(changes), timeout)

    async def _conf_change(self, change: ConfChange | tuple[ConfChange, ...], timeout: float | None) -> None:
        self._check_open()
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(ConfRequest(change, fut))
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
