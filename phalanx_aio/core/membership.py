"""Membership changes: single-server changes (thesis §4.1) with learners.

A change is proposed as a :class:`ConfChange`; the leader validates it against the current
configuration and appends a CONF entry holding the change *and the whole resulting
configuration*. Every node switches to a configuration as soon as the entry is in its log
(committed or not), and back if the entry is truncated away, so :class:`ConfHistory` keeps one
configuration per CONF entry still in the log.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass

from phalanx_aio.core.types import ConfState
from phalanx_aio.errors import ProposalDropped, ProtocolError

__all__ = ["ConfChange", "ConfChangeType", "ConfHistory", "apply_change", "decode_conf", "encode_conf"]


class ConfChangeType(enum.Enum):
    """The membership changes a leader accepts, one at a time."""

    ADD_LEARNER = "add_learner"
    """Add a non-voting member that receives the log."""
    ADD_VOTER = "add_voter"
    """Add a voter; on an existing learner this is a promotion."""
    REMOVE = "remove"
    """Remove a voter or a learner."""
    PROMOTE = "promote"
    """Make an existing learner a voter (refused for anyone else)."""


@dataclass(frozen=True, slots=True)
class ConfChange:
    """One membership change; ``context`` is stored with the member (for example its address)."""

    type: ConfChangeType
    node_id: str
    context: bytes = b""


def apply_change(conf: ConfState, change: ConfChange) -> ConfState:
    """The configuration after ``change``; raises :class:`ProposalDropped` if it is invalid."""
    nid = change.node_id
    if not nid:
        raise ProposalDropped("membership change needs a non-empty node id")
    voters, learners = set(conf.voters), set(conf.learners)
    contexts = dict(conf.contexts)
    if change.type is ConfChangeType.ADD_LEARNER:
        if nid in voters:
            raise ProposalDropped(f"{nid!r} is already a voter")
        if nid in learners:
            raise ProposalDropped(f"{nid!r} is already a learner")
        learners.add(nid)
    elif change.type is ConfChangeType.ADD_VOTER:
        if nid in voters:
            raise ProposalDropped(f"{nid!r} is already a voter")
        learners.discard(nid)
        voters.add(nid)
    elif change.type is ConfChangeType.PROMOTE:
        if nid not in learners:
            raise ProposalDropped(f"cannot promote {nid!r}: it is not a learner")
        learners.discard(nid)
        voters.add(nid)
    else:
        if nid not in voters and nid not in learners:
            raise ProposalDropped(f"{nid!r} is not a member")
        if voters == {nid}:
            raise ProposalDropped(f"cannot remove {nid!r}: it is the last voter")
        voters.discard(nid)
        learners.discard(nid)
        contexts.pop(nid, None)
    if change.type is not ConfChangeType.REMOVE and (change.context or nid not in contexts):
        contexts[nid] = change.context
    return ConfState(
        voters=frozenset(voters),
        learners=frozenset(learners),
        contexts=tuple(sorted(contexts.items())),
    )


def encode_conf(change: ConfChange | None, conf: ConfState) -> bytes:
    """The data of a CONF entry: the change (``None`` at bootstrap) and the resulting config."""
    doc: dict[str, object] = {
        "voters": sorted(conf.voters),
        "learners": sorted(conf.learners),
        "contexts": {k: v.hex() for k, v in conf.contexts},
    }
    if change is not None:
        doc["change"] = {"type": change.type.value, "node": change.node_id, "context": change.context.hex()}
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def decode_conf(data: bytes) -> tuple[ConfChange | None, ConfState]:
    """Inverse of :func:`encode_conf`; raises :class:`ProtocolError` on malformed data."""
    try:
        doc = json.loads(data)
        conf = ConfState(
            voters=frozenset(str(v) for v in doc["voters"]),
            learners=frozenset(str(v) for v in doc["learners"]),
            contexts=tuple(sorted((str(k), bytes.fromhex(v)) for k, v in doc["contexts"].items())),
        )
        change = None
        if "change" in doc:
            c = doc["change"]
            change = ConfChange(ConfChangeType(c["type"]), str(c["node"]), bytes.fromhex(c["context"]))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ProtocolError(f"malformed configuration entry: {exc}") from exc
    if conf.voters & conf.learners:
        raise ProtocolError("malformed configuration entry: a node is both voter and learner")
    return change, conf


class ConfHistory:
    """The configurations of the CONF entries still in the log, above a base configuration.

    Invariant: ``_items[0]`` is the base (the configuration at the snapshot index); indexes
    strictly increase; the current configuration is the last item.
    """

    __slots__ = ("_items",)

    def __init__(self, base_index: int, base: ConfState) -> None:
        self._items: list[tuple[int, ConfState]] = [(base_index, base)]

    @property
    def current(self) -> ConfState:
        """The configuration in force (that of the last CONF entry in the log)."""
        return self._items[-1][1]

    @property
    def last_index(self) -> int:
        """Index of the last CONF entry in the log (or the base index)."""
        return self._items[-1][0]

    def append(self, index: int, conf: ConfState) -> None:
        """Record a CONF entry appended at ``index``."""
        assert index > self._items[-1][0], "configuration indexes must increase"
        self._items.append((index, conf))

    def truncate_from(self, index: int) -> None:
        """Forget CONF entries at ``index`` and above (they were overwritten)."""
        while len(self._items) > 1 and self._items[-1][0] >= index:
            self._items.pop()

    def at(self, index: int) -> ConfState:
        """The configuration in force at log index ``index``."""
        conf = self._items[0][1]
        for idx, c in self._items:
            if idx > index:
                break
            conf = c
        return conf

    def compact_to(self, index: int) -> None:
        """The log is compacted up to ``index``: make the configuration there the base."""
        base = self.at(index)
        self._items = [(index, base)] + [(i, c) for i, c in self._items if i > index]
