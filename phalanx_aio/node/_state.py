"""The state the parts of :class:`~phalanx_aio.RaftNode` share (private).

``RaftNode`` is assembled from small mixins, one concern each (:mod:`~phalanx_aio.node._proposals`,
:mod:`~phalanx_aio.node._writer`, :mod:`~phalanx_aio.node._snapshots`,
:mod:`~phalanx_aio.node._membership`); this base declares the attributes they read and write,
which ``RaftNode.__init__`` sets. All of it belongs to the node's one loop task.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from phalanx_aio.core.config import Config
from phalanx_aio.core.membership import ConfChange
from phalanx_aio.core.raft import Raft, Role
from phalanx_aio.core.types import ConfState, Entry, HardState, Snapshot
from phalanx_aio.node._forwards import Forwards
from phalanx_aio.node._futures import Batch
from phalanx_aio.node._items import Item
from phalanx_aio.node._leader_work import Subscriptions
from phalanx_aio.node._reads import Reads
from phalanx_aio.node.events import EventListener, NodeEvent
from phalanx_aio.node.state_machine import StateMachine
from phalanx_aio.storage.base import Storage
from phalanx_aio.transport.base import Transport

__all__ = ["LatencyObserver", "NodeLogger", "NodeState"]

LatencyObserver = Callable[[str, float], None]
"""``observer(kind, seconds)``: see :meth:`RaftNode.set_latency_observer`."""


class NodeLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """Puts the node id and term on every record."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        node = self.extra["node"] if self.extra else None
        extra = dict(kwargs.get("extra") or {})
        extra.setdefault("node_id", getattr(node, "id", "?"))
        core = getattr(node, "_core", None)
        extra.setdefault("term", core.term if core is not None else 0)
        kwargs["extra"] = extra
        return f"[{extra['node_id']} t{extra['term']}] {msg}", kwargs


class NodeState:
    """Declarations only: the attributes the node's parts share (see ``RaftNode.__init__``)."""

    id: str
    config: Config
    log: logging.LoggerAdapter[logging.Logger]
    _storage: Storage
    _transport: Transport | None
    _initial_peers: dict[str, str]
    _sm: StateMachine
    _core: Raft | None
    _queue: asyncio.Queue[Item]
    _closed: bool
    _healthy: bool
    _listeners: list[EventListener]
    _latency: LatencyObserver | None
    _item_handlers: dict[type, Callable[[Raft, Any], None]]
    _failure: BaseException | None
    _subscriptions: Subscriptions
    _seen: tuple[int, Role, str | None]
    _reads: Reads
    _leader_changed: asyncio.Event
    _last_leader: str | None
    _sweep_in: int
    _own: bytes
    _other: bytes
    _saved_tv: tuple[int, str | None]
    _unsaved_hs: HardState | None
    # proposals
    _pending: dict[int, asyncio.Future[Any] | Batch]
    _carry: deque[tuple[int, bytes]]
    _leaderless: dict[int, bytes]
    _placed: list[tuple[int, int, list[tuple[int, bytes]]]]
    _forwards: Forwards
    _answering: set[str]
    _probed: tuple[str, int] | None
    _turn_cap: int
    # the background writer
    _writer: asyncio.Task[None] | None
    _behind: list[Entry]
    _behind_bytes: int
    _behind_hs: HardState | None
    _behind_snap: Snapshot | None
    # local snapshots
    _snapshot_every: int
    _snapshot_bytes: int
    _snapshot_due: int
    _log_bytes: int
    _log_bytes_due: int
    _last_snap_size: int
    _snap_bytes_taken: int
    _snap_rng: random.Random
    _snap_building: bool
    _snap_task: asyncio.Task[None] | None
    _snap_retry: Snapshot | None
    _snap_retry_at: float
    _snap_retry_delay: float
    _compacted: list[list[Entry]]
    # membership
    _peers_conf: ConfState | None
    _conf_waiters: dict[int, tuple[int, asyncio.Future[None]]]
    _leave_waiters: list[asyncio.Future[None]]
    _deferred_conf: list[tuple[ConfChange | tuple[ConfChange, ...], asyncio.Future[Any]]]
    _removed_members: dict[str, int]
    _removed_at: int | None

    if TYPE_CHECKING:  # defined by RaftNode and the mixins; declared for the others

        def _emit(self, event: NodeEvent) -> None: ...

        def _report_latency(self, observer: LatencyObserver, kind: str, started: float) -> None: ...

        def _start_writer(self) -> None: ...

        async def _save_local_snapshot(self, snap: Snapshot) -> None: ...
