"""Membership changes: single-server changes (thesis §4.1) with learners, and joint
consensus (thesis §4.3) for several voters at once.

A change is proposed as a :class:`ConfChange` (or several, see :func:`enter_joint`); the leader
validates it against the current configuration and appends a CONF entry holding the change
*and the whole resulting configuration*. Every node switches to a configuration as soon as the
entry is in its log (committed or not), and back if the entry is truncated away, so
:class:`ConfHistory` keeps one configuration per CONF entry still in the log.

Several changes that touch more than one voter go through a joint configuration C_old,new
(:func:`enter_joint`): decisions need a majority of both the old and the new voters. Once that
entry is committed, the leader appends C_new (:func:`leave_joint`), which needs only the new
majority. The configuration also remembers the members removed so far (``removed``, with the
index of the change that removed each), so that every member can tell a removed node why it
is refused, after any restart.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Sequence
from dataclasses import dataclass, replace

from phalanx_aio.core.types import ConfState
from phalanx_aio.errors import ProposalDropped, ProtocolError

__all__ = [
    "MAX_REMOVED",
    "ConfChange",
    "ConfChangeType",
    "ConfHistory",
    "apply_change",
    "decode_conf",
    "decode_conf_changes",
    "encode_conf",
    "enter_joint",
    "leave_joint",
    "note_removals",
]

MAX_REMOVED = 1024
"""Removed members a configuration remembers (the most recent; older ones are forgotten)."""


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
    """The configuration after ``change``; raises :class:`ProposalDropped` if it is invalid
    (or if ``conf`` is joint: leave it first)."""
    if conf.joint:
        raise ProposalDropped("the configuration is joint: it must be left before another change")
    return _apply(conf, change, allow_no_voter=False)


def _apply(conf: ConfState, change: ConfChange, allow_no_voter: bool) -> ConfState:
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
        if voters == {nid} and not allow_no_voter:
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
        removed=conf.removed,
    )


_ORDER = {
    ConfChangeType.ADD_LEARNER: 0,
    ConfChangeType.ADD_VOTER: 0,
    ConfChangeType.PROMOTE: 0,
    ConfChangeType.REMOVE: 1,
}


def enter_joint(conf: ConfState, changes: Sequence[ConfChange]) -> ConfState:
    """The configuration after ``changes`` taken together (thesis §4.3).

    If they change the set of voters, the result is the joint configuration C_old,new: its
    ``voters`` are the new voters, its ``voters_outgoing`` the current ones, and a removed
    voter keeps its context until the joint configuration is left. If only learners change,
    the result is simply the new configuration. Each node may be named once; a voter cannot
    be made a learner in one step (remove it, then add it as a learner). Raises
    :class:`ProposalDropped` if a change is invalid, if the new configuration would have no
    voter, or if ``conf`` is already joint.
    """
    if conf.joint:
        raise ProposalDropped("the configuration is already joint: it must be left first")
    if not changes:
        raise ProposalDropped("a joint change needs at least one change")
    named: set[str] = set()
    for change in changes:
        if change.node_id in named:
            raise ProposalDropped(f"{change.node_id!r} is named twice in one change")
        named.add(change.node_id)
        if change.type is ConfChangeType.ADD_LEARNER and change.node_id in conf.voters:
            raise ProposalDropped(
                f"cannot make voter {change.node_id!r} a learner in a joint change: "
                "remove it, then add it as a learner"
            )
    new = conf
    for change in sorted(changes, key=lambda c: _ORDER[c.type]):  # additions first (stable)
        new = _apply(new, change, allow_no_voter=True)
    if not new.voters:
        raise ProposalDropped("the new configuration would have no voter")
    if new.voters == conf.voters:
        return new
    contexts = dict(new.contexts)
    for nid in conf.voters - new.voters:
        contexts[nid] = conf.context(nid)  # still a voter of the outgoing half
    return replace(new, contexts=tuple(sorted(contexts.items())), voters_outgoing=conf.voters)


def leave_joint(conf: ConfState) -> ConfState:
    """C_new: the joint configuration ``conf`` without its outgoing half. Raises
    :class:`ProposalDropped` if ``conf`` is not joint."""
    if not conf.joint:
        raise ProposalDropped("the configuration is not joint")
    members = conf.voters | conf.learners
    return ConfState(
        voters=conf.voters,
        learners=conf.learners,
        contexts=tuple((nid, ctx) for nid, ctx in conf.contexts if nid in members),
        removed=conf.removed,
    )


def note_removals(before: ConfState, after: ConfState, index: int) -> ConfState:
    """``after`` with ``removed`` updated for the CONF entry at ``index``: members of
    ``before`` that ``after`` no longer has are remembered as removed there, and members
    added again are forgotten (at most :data:`MAX_REMOVED`, the most recent kept)."""
    gone = before.members() - after.members()
    removed = [(nid, at) for nid, at in after.removed if not after.is_member(nid) and nid not in gone]
    removed += [(nid, index) for nid in sorted(gone)]
    if len(removed) > MAX_REMOVED:
        removed = sorted(removed, key=lambda item: item[1])[-MAX_REMOVED:]
    return replace(after, removed=tuple(sorted(removed)))


def _change_doc(change: ConfChange) -> dict[str, str]:
    return {"type": change.type.value, "node": change.node_id, "context": change.context.hex()}


def encode_conf(change: ConfChange | Sequence[ConfChange] | None, conf: ConfState) -> bytes:
    """The data of a CONF entry: the change (``None`` at bootstrap and when a joint
    configuration is left; a sequence for a joint change) and the resulting config."""
    doc: dict[str, object] = {
        "voters": sorted(conf.voters),
        "learners": sorted(conf.learners),
        "contexts": {k: v.hex() for k, v in conf.contexts},
    }
    if conf.voters_outgoing:
        doc["voters_outgoing"] = sorted(conf.voters_outgoing)
    if conf.removed:
        doc["removed"] = {nid: at for nid, at in conf.removed}
    if isinstance(change, ConfChange):
        doc["change"] = _change_doc(change)
    elif change is not None:
        doc["changes"] = [_change_doc(c) for c in change]
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def _change_of(c: dict[str, str]) -> ConfChange:
    return ConfChange(ConfChangeType(c["type"]), str(c["node"]), bytes.fromhex(c["context"]))


def decode_conf(data: bytes) -> tuple[ConfChange | None, ConfState]:
    """Inverse of :func:`encode_conf` for the configuration and a single change (the first
    of a joint change's; see :func:`decode_conf_changes` for all); raises
    :class:`ProtocolError` on malformed data."""
    changes, conf = decode_conf_changes(data)
    return (changes[0] if changes else None), conf


def decode_conf_changes(data: bytes) -> tuple[list[ConfChange], ConfState]:
    """Inverse of :func:`encode_conf`: every change the entry records (none at bootstrap or
    when leaving a joint configuration) and the resulting configuration."""
    try:
        doc = json.loads(data)
        conf = ConfState(
            voters=frozenset(str(v) for v in doc["voters"]),
            learners=frozenset(str(v) for v in doc["learners"]),
            contexts=tuple(sorted((str(k), bytes.fromhex(v)) for k, v in doc["contexts"].items())),
            voters_outgoing=frozenset(str(v) for v in doc.get("voters_outgoing", ())),
            removed=tuple(sorted((str(k), int(v)) for k, v in doc.get("removed", {}).items())),
        )
        changes = []
        if "change" in doc:
            changes.append(_change_of(doc["change"]))
        changes.extend(_change_of(c) for c in doc.get("changes", ()))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ProtocolError(f"malformed configuration entry: {exc}") from exc
    if conf.voters & conf.learners or conf.voters_outgoing & conf.learners:
        raise ProtocolError("malformed configuration entry: a node is both voter and learner")
    if conf.joint and not conf.voters:
        raise ProtocolError("malformed configuration entry: a joint configuration without new voters")
    return changes, conf


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
