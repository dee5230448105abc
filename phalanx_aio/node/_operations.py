"""The operations of :class:`~phalanx_aio.RaftNode` (private): the calls an application makes
to change the replicated state or read it (``propose``, ``propose_many``, ``read``), and to
change the cluster (members, leadership). Each only checks, registers its future and queues
an item (or a proposal beside the queue); the loop does the rest.

A mixin, like :mod:`phalanx_aio.node._proposals`.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Final, TypeVar

from phalanx_aio._deadlines import Deadlines
from phalanx_aio.core.membership import ConfChange, ConfChangeType
from phalanx_aio.errors import LocalError, NotLeader, PhalanxError, ProposalDropped, Timeout
from phalanx_aio.node import _envelope
from phalanx_aio.node._futures import Batch
from phalanx_aio.node._items import WAKE, ConfRequest, ReadRequest, TransferRequest
from phalanx_aio.node._state import NodeState

__all__ = ["Operations"]

T = TypeVar("T")

_COMMAND_TYPES: Final = (bytes, bytearray, memoryview)

# The request id of an envelope, packed after the proposer's prefix (_envelope).
_pack_request = _envelope.pack_request


class Operations(NodeState):
    """Proposals, reads, membership changes and leadership transfers, as callers ask them."""

    _max_pending: int
    _max_pending_bytes: int
    _pending_bytes: int
    _default_timeout: float
    _req_ids: itertools.count[int]
    _wake_queued: bool
    _deadlines: Deadlines

    if TYPE_CHECKING:  # defined by RaftNode and the other mixins

        @property
        def is_leader(self) -> bool: ...

        async def wait_for_leader(
            self, timeout: float | None = None, *, leader: str | None = None, exclude: str | None = None
        ) -> str: ...

        def _check_open(self) -> None: ...

        def _not_proposed(self, reqs: Iterable[int]) -> bool: ...

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
