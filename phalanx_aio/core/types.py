"""The core's records: entries, hard state, configurations, snapshots, messages.

All are frozen, slotted dataclasses owned by the core. Transports translate them to and from
their wire format (see ``phalanx_aio.transport``); storage saves them. Node ids are strings.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

__all__ = [
    "ConfState",
    "Entry",
    "EntryType",
    "HardState",
    "InitialState",
    "Message",
    "MessageType",
    "Placement",
    "PlacementOutcome",
    "ReadState",
    "Snapshot",
    "SnapshotMeta",
]


class EntryType(enum.IntEnum):
    """What a log entry carries."""

    NORMAL = 0
    """An application command: ``data`` is handed to the state machine."""
    NOOP = 1
    """The empty entry a new leader appends (Raft §8); nothing to apply."""
    CONF = 2
    """A membership change: ``data`` encodes the change and the resulting :class:`ConfState`."""


@dataclass(frozen=True, slots=True, init=False)
class Entry:
    """One log entry. ``(term, index)`` identifies it uniquely across the cluster."""

    term: int
    index: int
    type: EntryType
    data: bytes

    def __init__(self, term: int, index: int, type: EntryType = EntryType.NORMAL, data: bytes = b"") -> None:
        # Hand-written: the generated __init__ of a frozen dataclass sets each field through
        # object.__setattr__; the slots' own setters do the same in about 60 % of the time,
        # and a leader makes one Entry per command.
        _set_term(self, term)
        _set_index(self, index)
        _set_type(self, type)
        _set_data(self, data)

    def size(self) -> int:
        """Bytes this entry counts for in flow control (payload plus a fixed header)."""
        return len(self.data) + 16


_set_term, _set_index, _set_type, _set_data = (
    vars(Entry)[f].__set__ for f in ("term", "index", "type", "data")
)


@dataclass(frozen=True, slots=True)
class HardState:
    """What a node must persist before it answers anyone: term, vote and commit index."""

    term: int = 0
    vote: str | None = None
    commit: int = 0


@dataclass(frozen=True, slots=True)
class ConfState:
    """A cluster configuration: the voters, the learners, and an opaque context per member.

    ``contexts`` maps a member id to bytes its driver attached when it was added (the node's
    address, for example); the core stores and replicates them but never reads them.

    A *joint* configuration (Raft thesis §4.3) also names ``voters_outgoing``, the voters of
    the configuration being left: while it is in force, elections and commitment need a
    majority of ``voters`` **and** a majority of ``voters_outgoing``.

    Invariants: ``learners`` is disjoint from ``voters`` and from ``voters_outgoing``; every
    key of ``contexts`` is a member (a voter of either half, or a learner).
    """

    voters: frozenset[str] = frozenset()
    learners: frozenset[str] = frozenset()
    contexts: tuple[tuple[str, bytes], ...] = ()
    voters_outgoing: frozenset[str] = frozenset()
    removed: tuple[tuple[str, int], ...] = ()
    """Members removed by earlier changes, each with the index of the CONF entry that removed
    it (sorted by id; bounded, see :data:`phalanx_aio.core.membership.MAX_REMOVED`)."""

    @property
    def joint(self) -> bool:
        """True in a joint configuration (between entering and leaving it)."""
        return bool(self.voters_outgoing)

    def is_member(self, node_id: str) -> bool:
        """True if ``node_id`` is a voter (of either half) or a learner."""
        return node_id in self.voters or node_id in self.learners or node_id in self.voters_outgoing

    def is_voter(self, node_id: str) -> bool:
        """True if ``node_id`` votes: a voter of either half of a joint configuration."""
        return node_id in self.voters or node_id in self.voters_outgoing

    def all_voters(self) -> frozenset[str]:
        """The voters of both halves (just ``voters`` outside a joint configuration)."""
        return self.voters | self.voters_outgoing

    def members(self) -> frozenset[str]:
        """Voters (of both halves) and learners together."""
        return self.voters | self.learners | self.voters_outgoing

    def context(self, node_id: str) -> bytes:
        """The context attached to ``node_id`` (empty if none)."""
        for nid, ctx in self.contexts:
            if nid == node_id:
                return ctx
        return b""


@dataclass(frozen=True, slots=True)
class SnapshotMeta:
    """Where a snapshot sits in the log: the last index it covers, that entry's term, and the
    configuration in force at that index."""

    index: int = 0
    term: int = 0
    conf: ConfState = field(default_factory=ConfState)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A state machine snapshot: its metadata and the application's bytes."""

    meta: SnapshotMeta = field(default_factory=SnapshotMeta)
    data: bytes = b""


@dataclass(frozen=True, slots=True)
class InitialState:
    """What a node loads from storage at start: hard state, last snapshot, the log after it.

    ``snapshot.meta.conf`` is the configuration at the snapshot index; for a brand-new node
    joining an existing cluster everything is empty.
    """

    hard_state: HardState = field(default_factory=HardState)
    snapshot: Snapshot = field(default_factory=Snapshot)
    entries: tuple[Entry, ...] = ()


class PlacementOutcome(enum.IntEnum):
    """What became of a forwarded proposal (see :class:`Placement`)."""

    PLACED = 0
    """Appended by the leader at ``(term, index)``: applied if and only if the entry committed
    at ``index`` has that ``term``."""
    NOT_LEADER = 1
    """The node asked was not the leader of the term asked: not appended by this attempt."""
    DROPPED = 2
    """The leader refused it (leadership transfer, too much uncommitted data, being removed):
    never applied."""
    UNKNOWN = 3
    """A retry the leader could not check (the log where an earlier copy may sit is compacted):
    the outcome is unknown."""


@dataclass(frozen=True, slots=True)
class Placement:
    """Where a forwarded proposal (or a retried one) ended up: the answer for ``context``.

    On ``PLACED``, the commands of the forward sit at consecutive indexes from ``index``, all of
    ``term``. A driver then knows its proposal's fate from the committed log alone: applied if
    the entry committed at ``index`` has ``term``, certainly not applied otherwise.
    """

    context: bytes
    outcome: PlacementOutcome
    term: int = 0
    index: int = 0


@dataclass(frozen=True, slots=True)
class ReadState:
    """A linearizable read may be served once this node has applied ``index``.

    ``context`` is the caller's identifier passed to ``read_index``.
    """

    index: int
    context: bytes


class MessageType(enum.IntEnum):
    """The kinds of message cores exchange."""

    APP = 1
    """Append entries (also probes): ``index``/``log_term`` name the preceding entry."""
    APP_RESP = 2
    """Answer to APP or SNAP: ``index`` is the last matching index, or the rejected one."""
    VOTE = 3
    """Request a vote: ``index``/``log_term`` describe the candidate's last entry."""
    VOTE_RESP = 4
    PRE_VOTE = 5
    """Ask whether a vote would be granted at ``term`` without anyone raising their term."""
    PRE_VOTE_RESP = 6
    HEARTBEAT = 7
    """Leader liveness; ``commit`` is safe for the follower, ``seq`` is the heartbeat round."""
    HEARTBEAT_RESP = 8
    SNAP = 9
    """Install ``snapshot``: the follower is behind the leader's first log index."""
    PROP = 10
    """A proposal forwarded by a follower to its leader. ``term`` is the term in which the
    follower knows the receiver as leader: only the leader of that term appends it, so one
    forward is appended at most once. ``context`` names the forward; the leader answers with
    PROP_RESP when it is set. ``index`` is 0 on a first attempt; on a retry (the earlier
    attempt's outcome unknown) it is the first log index where an earlier copy may sit, and the
    message carries one entry. ``term`` 0 (earlier releases): appended unanswered."""
    READ_INDEX = 11
    """A follower asks the leader for a read index (``term`` 0), identified by ``context``."""
    READ_INDEX_RESP = 12
    """The leader's answer: ``index`` is the read index for ``context`` (``reject`` if none)."""
    TIMEOUT_NOW = 13
    """Leadership transfer: the target campaigns at once, bypassing pre-vote and leases."""
    PROP_RESP = 14
    """The answer to a PROP with a ``context`` (echoed), for the PROP's ``term`` (echoed).
    Placed: ``index`` and ``log_term`` say where the first entry sits (the others follow it).
    Refused (``reject``): ``reject_hint`` is a :class:`PlacementOutcome` saying why."""


@dataclass(frozen=True, slots=True)
class Message:
    """A message between two cores. Fields a type does not use keep their defaults."""

    type: MessageType
    to: str
    frm: str
    term: int
    log_term: int = 0
    index: int = 0
    entries: tuple[Entry, ...] = ()
    commit: int = 0
    reject: bool = False
    reject_hint: int = 0
    snapshot: Snapshot | None = None
    context: bytes = b""
    seq: int = 0
    transfer: bool = False
    """On VOTE/PRE_VOTE/TIMEOUT_NOW: part of a leadership transfer (bypasses leader leases)."""
    election_timeout: int = 0
    """On HEARTBEAT, in RTT-aware mode: the election timeout (ticks) the leader advises its
    followers to adopt, derived from measured round trips; 0 means no advice."""
    election_delay: int = 0
    """On HEARTBEAT, in RTT-aware mode with ``rtt_succession``: the ticks beyond the election
    timeout that this follower waits before it stands, its place in the leader's succession
    order; 0 means no advice."""
