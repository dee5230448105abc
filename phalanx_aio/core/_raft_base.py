"""What the parts of :class:`~phalanx_aio.core.raft.Raft` share (private): the :class:`Role`, the
message-type aliases and bounds the step functions use, and :class:`RaftState`, the
declarations of the attributes ``Raft.__init__`` sets.

``Raft`` is assembled from mixins, one concern each: elections and time
(:mod:`~phalanx_aio.core._elections`), proposals and forwarding
(:mod:`~phalanx_aio.core._proposals`), reads (:mod:`~phalanx_aio.core._reads`), and replication
(:mod:`~phalanx_aio.core._replication`); ``raft.py`` keeps construction, queries, ``step`` and
the ``Ready`` output. A mixin's methods are plain methods of ``Raft``: no call is added.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from phalanx_aio.core.config import Config
from phalanx_aio.core.log import RaftLog
from phalanx_aio.core.membership import (
    ConfChange,
    ConfHistory,
)
from phalanx_aio.core.progress import Progress
from phalanx_aio.core.types import (
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    Placement,
    PlacementOutcome,
    ReadState,
    Snapshot,
)

__all__ = ["RaftState", "Role"]

_MAX_APPLY_BYTES = 64 << 20

_APP = MessageType.APP
_APP_RESP = MessageType.APP_RESP
_VOTE = MessageType.VOTE
_VOTE_RESP = MessageType.VOTE_RESP
_PRE_VOTE = MessageType.PRE_VOTE
_PRE_VOTE_RESP = MessageType.PRE_VOTE_RESP
_HEARTBEAT = MessageType.HEARTBEAT
_HEARTBEAT_RESP = MessageType.HEARTBEAT_RESP
_SNAP = MessageType.SNAP
_PROP = MessageType.PROP
_READ_INDEX = MessageType.READ_INDEX
_READ_INDEX_RESP = MessageType.READ_INDEX_RESP
_TIMEOUT_NOW = MessageType.TIMEOUT_NOW
_PROP_RESP = MessageType.PROP_RESP
_PLACED = PlacementOutcome.PLACED
_NOT_LEADER = PlacementOutcome.NOT_LEADER
_DROPPED = PlacementOutcome.DROPPED
_UNKNOWN = PlacementOutcome.UNKNOWN

# Messages that are not term-checked: forwarded requests and their answers. Their safety does
# not depend on the receiver's term: a forward names the term of the leader it is meant for,
# and an answer is taken only from the node asked, for the term asked (see _on_forwarded,
# _on_placement and _follower_read_resp).
_UNCHECKED = frozenset({_PROP, _PROP_RESP, _READ_INDEX, _READ_INDEX_RESP})

# Forwarded proposals and reads waiting for their answer, remembered per context as the
# (leader, term) asked; past this many (answers lost with a broken connection) the oldest
# are forgotten: their answers will be ignored, and the driver times them out.
_MAX_ASKED = 1 << 16

# RTT-aware mode: heartbeat answers older than this many rounds are not timed, and a
# follower's RTT counts once it has this many samples (or rtt_window, if smaller).
_RTT_ROUNDS_KEPT = 64
_RTT_MIN_SAMPLES = 8


class Role(enum.Enum):
    """A node's role in its current term."""

    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre-candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


class RaftState:
    """Declarations only: the attributes the parts of ``Raft`` share (see ``Raft.__init__``)."""

    id: str
    cfg: Config
    log: RaftLog
    confs: ConfHistory
    term: int
    vote: str | None
    leader: str | None
    role: Role
    lead_transferee: str | None
    prs: dict[str, Progress]
    _rng: random.Random
    _clock: Callable[[], float] | None
    _snapshot: Snapshot | None
    _prev_hs: HardState
    _msgs: list[Message]
    _read_states: list[ReadState]
    _dropped_reads: list[bytes]
    _ticks: int
    _election_elapsed: int
    _heartbeat_elapsed: int
    _randomized_timeout: int
    _election_timeout: int
    _election_delay: int
    _quiet_ticks: int
    _founded_now: bool
    _hb_sent: dict[int, int]
    _votes: dict[str, bool]
    _committed_in_term: bool
    _lease_void: bool
    _uncommitted_bytes: int
    _round: int
    _round_ticks: dict[int, float]
    _read_acks: dict[str, int]
    _pending_reads: list[tuple[int, int, bytes, str]]
    _reads_before_commit: list[tuple[bytes, str]]
    _forwards: dict[bytes, tuple[str, int]]
    _asked_reads: dict[bytes, tuple[str, int]]
    _placements: list[Placement]
    _retries_before_commit: list[tuple[bytes, bytes, int, str]]
    _copies: dict[bytes, Entry] | None
    _copies_from: int
    _term_start: int
    _bcast_entries: bool
    _bcast_commit: bool
    _bcast_read: bool

    if TYPE_CHECKING:  # defined by Raft and the mixins; declared for the others

        @property
        def conf(self) -> ConfState: ...

        def _drop_reads(self) -> None: ...

        def _become_follower(self, term: int, leader: str | None) -> None: ...

        def quorum_rtt(self) -> int | None: ...

        def _advised_timeout(self, q: int | None) -> int: ...

        def _adopt_timeout(self, advised: int, delay: int = 0) -> None: ...

        def _succession(self, q: int) -> dict[str, int]: ...

        def _retry(self, data: bytes, context: bytes, since: int, requester: str) -> None: ...

        def _answer_forward(
            self,
            requester: str,
            context: bytes,
            term: int,
            outcome: PlacementOutcome,
            placed_term: int = 0,
            index: int = 0,
        ) -> None: ...

        def _append_conf(self, change: ConfChange | Sequence[ConfChange] | None, new: ConfState) -> int: ...

        def _append(self, etype: EntryType, datas: Sequence[bytes]) -> int: ...

        def _leader_read(self, ctx: bytes, requester: str) -> None: ...

        def _refuse_read(self, ctx: bytes, requester: str) -> None: ...

        def _now(self) -> float: ...

        def _release_reads(self) -> None: ...

        def _follower_read_resp(self, m: Message) -> None: ...

        def _handle_append(self, m: Message) -> None: ...

        def _handle_heartbeat(self, m: Message) -> None: ...

        def _handle_snapshot(self, m: Message) -> None: ...

        def _send(self, m: Message) -> None: ...

        def _bcast_heartbeat(self) -> None: ...

        def _apply_conf(self, index: int, conf: ConfState) -> None: ...


def _remember(asked: dict[bytes, tuple[str, int]], context: bytes, value: tuple[str, int]) -> None:
    """Record what was asked of whom for ``context``, forgetting the oldest past _MAX_ASKED."""
    asked.pop(context, None)
    if len(asked) >= _MAX_ASKED:
        del asked[next(iter(asked))]
    asked[context] = value
