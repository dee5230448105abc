"""RaftNode's events and the exact counters built on them, on the in-memory cluster.

The oracle for elections is what each node actually sent: a node started an election in term
``t`` exactly when it sent vote requests (not pre-votes) for ``t``, and won it exactly when it
sent appends or heartbeats as leader of ``t``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import pytest
from prometheus_client.parser import text_string_to_metric_families

from phalanx_aio import (
    ElectionStarted,
    ElectionWon,
    LeaderChanged,
    LocalError,
    MembershipChanged,
    NodeEvent,
    RoleChanged,
    SnapshotRestored,
    SnapshotSent,
    SnapshotTaken,
    TermChanged,
)
from phalanx_aio.core.membership import ConfChangeType
from phalanx_aio.core.types import Message, MessageType
from phalanx_aio.observability import NodeMetrics
from phalanx_aio.transport.memory import MemoryNetwork, MemoryTransport
from tests.node.harness import Harness

IDS = ["n1", "n2", "n3"]
_LEADER_MSGS = {MessageType.APP, MessageType.HEARTBEAT, MessageType.SNAP}


class RecordingTransport(MemoryTransport):
    """A memory transport that keeps (type, term) of every message its node sends."""

    def __init__(self, node_id: str, network: MemoryNetwork) -> None:
        super().__init__(node_id, network)
        self.sent: list[tuple[MessageType, int]] = []

    def send(self, messages: Sequence[Message]) -> None:
        self.sent.extend((m.type, m.term) for m in messages)
        super().send(messages)


def of(events: list[NodeEvent], kind: type[NodeEvent]) -> list[NodeEvent]:
    return [e for e in events if type(e) is kind]


def sample(metrics: NodeMetrics, name: str, **labels: str) -> float:
    body = metrics.exposition().decode()
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    raise AssertionError(f"no sample {name} {labels}")


async def test_killing_the_leader_counts_elections_and_leader_changes_exactly() -> None:
    h = Harness(list(IDS))
    events: dict[str, list[NodeEvent]] = {nid: [] for nid in IDS}
    transports = {nid: RecordingTransport(nid, h.net) for nid in IDS}
    metrics: dict[str, NodeMetrics] = {}
    try:
        for nid in IDS:
            node = h.make(nid, transport=transports[nid], on_event=events[nid].append)
            metrics[nid] = NodeMetrics(node)
            await node.start()
        old = await h.leader()
        await old.propose(b"incr 1")
        await h.until(lambda: all(n.leader_id == old.id for n in h.nodes.values()))
        await h.stop(old.id)
        new = await h.leader()
        assert await new.propose(b"incr 1") == 2
        survivors = [n for n in IDS if n != old.id]
        await h.until(lambda: all(h.nodes[n].leader_id == new.id for n in survivors))

        # The test task runs only while every loop waits for input, so the events and the
        # messages sent are in step here (the in-memory store never yields mid-Ready).
        seen = {nid: list(events[nid]) for nid in IDS}
        sent = {nid: list(transports[nid].sent) for nid in IDS}
        terms = {nid: h.nodes[nid].status().term for nid in survivors}
        counted = {
            nid: {
                name: sample(metrics[nid], f"phalanx_{name}_total")
                for name in ("elections_started", "elections_won", "leader_changes", "term_changes")
            }
            for nid in IDS
        }
    finally:
        await h.aclose()

    won_by_term: dict[int, str] = {}
    for nid in IDS:
        ev = seen[nid]
        started = [e.term for e in of(ev, ElectionStarted)]
        won = [e.term for e in of(ev, ElectionWon)]
        assert started == sorted({t for typ, t in sent[nid] if typ is MessageType.VOTE}), nid
        assert won == sorted({t for typ, t in sent[nid] if typ in _LEADER_MSGS}), nid
        assert set(won) <= set(started), nid
        for t in won:
            assert t not in won_by_term, f"two leaders in term {t}"
            won_by_term[t] = nid
        # Term changes chain from the stored term 1 upwards, one event per change.
        changes = [e for e in ev if isinstance(e, TermChanged)]
        assert [c.previous for c in changes] == [1] + [c.term for c in changes[:-1]], nid
        assert all(c.term > c.previous for c in changes), nid
        if nid in terms:
            assert changes[-1].term == terms[nid]
        # Role changes chain the same way, and each win is a change to leader.
        roles = [e for e in ev if isinstance(e, RoleChanged)]
        assert [r.previous for r in roles] == ["follower", *(r.role for r in roles)][: len(roles)], nid
        assert [r.term for r in roles if r.role == "leader"] == won, nid
        leaders = [e for e in ev if isinstance(e, LeaderChanged)]
        assert [x.previous for x in leaders] == [None] + [x.leader for x in leaders[:-1]], nid
        # The counters are the events, one for one.
        assert counted[nid]["elections_started"] == len(started)
        assert counted[nid]["elections_won"] == len(won)
        assert counted[nid]["term_changes"] == len(changes)

    assert old.id in won_by_term.values() and won_by_term[max(won_by_term)] == new.id
    for nid in IDS:
        # Every leader a node learned of really won that term; the last one is known.
        known = [(e.term, e.leader) for e in of(seen[nid], LeaderChanged) if isinstance(e, LeaderChanged)]
        named = [(t, lead) for t, lead in known if lead is not None]
        assert all(won_by_term.get(t) == lead for t, lead in named), (nid, named, won_by_term)
        assert old.id in [lead for _, lead in named]
        distinct = [lead for i, (_, lead) in enumerate(named) if i == 0 or named[i - 1][1] != lead]
        assert counted[nid]["leader_changes"] == len(distinct)
        if nid != old.id:
            assert named[-1] == (max(won_by_term), new.id)


async def test_membership_and_snapshot_events() -> None:
    h = Harness(list(IDS), snapshot_every=20)
    events: dict[str, list[NodeEvent]] = {nid: [] for nid in [*IDS, "n4"]}
    metrics: dict[str, NodeMetrics] = {}
    try:
        for nid in IDS:
            node = h.make(nid, on_event=events[nid].append)
            metrics[nid] = NodeMetrics(node)
            await node.start()
        leader = await h.leader()
        # Until the leader has taken two snapshots (after 20 to 25 entries each: the offset is
        # random per node); the few entries that follow cannot make it take a third.
        proposed = 0
        while sum(isinstance(e, SnapshotTaken) for e in events[leader.id]) < 2:
            await leader.propose(b"incr 1")
            proposed += 1
        h.ids.append("n4")
        n4 = h.make("n4", join=True)
        n4.add_listener(events["n4"].append)
        await n4.start()
        await leader.add_member("n4", "mem://n4")
        await h.until(lambda: h.sms["n4"].value == proposed)
        await leader.promote("n4")
        # n4 is a voter once it appends the change, and applies it once it learns the commit
        # (from the next heartbeat: the presets send the commit index lazily).
        promoted = leader.status().commit
        await h.until(lambda: "n4" in n4.status().voters and n4.status().applied >= promoted)
        lead_metrics = metrics[leader.id]
        taken = sample(lead_metrics, "phalanx_snapshots_total", event="taken")
        sent_ok = sample(lead_metrics, "phalanx_snapshots_total", event="sent")
        bootstrap = sample(lead_metrics, "phalanx_membership_changes_total", change="bootstrap")
        learners = sample(lead_metrics, "phalanx_membership_changes_total", change="add_learner")
        promotions = sample(lead_metrics, "phalanx_membership_changes_total", change="promote")
        # A restart installs the stored snapshot before anything else happens.
        await h.stop("n4")
        after_restart: list[NodeEvent] = []
        await h.start("n4", on_event=after_restart.append)
    finally:
        await h.aclose()

    lead = events[leader.id]
    snaps = [e for e in lead if isinstance(e, SnapshotTaken)]
    assert len(snaps) == 2 and 20 <= snaps[0].index < snaps[1].index - 19
    assert all(e.size == 16 for e in snaps)  # the Counter's state: two 8-byte integers
    assert [(e.peer, e.ok) for e in of(lead, SnapshotSent) if isinstance(e, SnapshotSent)] == [("n4", True)]
    restored = [e for e in events["n4"] if isinstance(e, SnapshotRestored)]
    assert [(e.index, e.source) for e in restored] == [(snaps[-1].index, "leader")]
    conf = [e for e in lead if isinstance(e, MembershipChanged)]
    kinds = [None if e.change is None else e.change.type for e in conf]
    assert kinds == [None, ConfChangeType.ADD_LEARNER, ConfChangeType.PROMOTE]
    assert conf[0].voters == tuple(IDS) and conf[1].learners == ("n4",)
    assert conf[2].voters == (*IDS, "n4") and conf[2].learners == ()
    # n4 got the founding configuration inside the snapshot; it applies the two changes after it.
    n4_conf = [e for e in events["n4"] if isinstance(e, MembershipChanged)]
    assert [e.change.type for e in n4_conf if e.change is not None] == kinds[1:]
    assert len(n4_conf) == 2
    assert (taken, sent_ok, bootstrap, learners, promotions) == (2, 1, 1, 1, 1)
    assert after_restart[0] == SnapshotRestored("n4", after_restart[0].term, snaps[-1].index, "storage")


async def test_listener_errors_are_logged_and_listeners_removed(caplog: pytest.LogCaptureFixture) -> None:
    h = Harness(list(IDS))
    got: list[NodeEvent] = []

    def broken(event: NodeEvent) -> None:
        raise RuntimeError("listener bug")

    try:
        for nid in IDS:
            node = h.make(nid, on_event=broken)
            node.add_listener(got.append)
            await node.start()
        with caplog.at_level(logging.ERROR, logger="phalanx_aio.node"):
            leader = await h.leader()
            assert await leader.propose(b"incr 3") == 3
        assert any("event listener" in r.getMessage() for r in caplog.records)
        assert any(isinstance(e, ElectionWon) and e.node_id == leader.id for e in got)
        for node in h.nodes.values():
            node.remove_listener(broken)
            node.remove_listener(got.append)
            with pytest.raises(LocalError, match="not added"):
                node.remove_listener(got.append)
            with pytest.raises(LocalError, match="callable"):
                node.add_listener(42)  # type: ignore[arg-type]
    finally:
        await h.aclose()
