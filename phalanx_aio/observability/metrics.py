"""Prometheus metrics of one node, kept in a per-node :class:`~prometheus_client.CollectorRegistry`.

:class:`NodeMetrics` counts the node's events exactly: it listens to them (elections, leader
and term changes, membership changes, snapshots; see :mod:`phalanx_aio.node.events`), so no
change between two scrapes is lost. At every scrape it reads
:meth:`RaftNode.status() <phalanx_aio.node.RaftNode.status>` into gauges and the transport's
counters into two metric families. :class:`~phalanx_aio.kv.MeteredKVService` reports the KV
service's writes and refusals to :meth:`NodeMetrics.observe_write` and
:meth:`NodeMetrics.observe_refusal`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from phalanx_aio.core.membership import ConfChangeType
from phalanx_aio.errors import PhalanxError
from phalanx_aio.node.events import (
    ElectionStarted,
    ElectionWon,
    LeaderChanged,
    MembershipChanged,
    NodeEvent,
    SnapshotRestored,
    SnapshotSent,
    SnapshotTaken,
    TermChanged,
)
from phalanx_aio.node.raft_node import NodeStatus, RaftNode

__all__ = ["KV_REFUSALS", "MEMBERSHIP_CHANGES", "ROLES", "SNAPSHOT_EVENTS", "WRITE_OUTCOMES", "NodeMetrics"]

ROLES: Final = ("leader", "follower", "candidate", "pre-candidate")
"""The values of the ``role`` label of ``phalanx_role``."""

MEMBERSHIP_CHANGES: Final = ("bootstrap", *(t.value for t in ConfChangeType))
"""The values of the ``change`` label of ``phalanx_membership_changes_total``."""

SNAPSHOT_EVENTS: Final = ("taken", "restored", "sent", "send_failed")
"""The values of the ``event`` label of ``phalanx_snapshots_total``."""

WRITE_OUTCOMES: Final = ("ok", "failed")
"""The values of the ``outcome`` label of ``phalanx_proposals_total``."""

KV_REFUSALS: Final = ("cluster", "invalid")
"""The values of the ``reason`` label of ``phalanx_kv_rejected_total``: a request naming another
cluster, a request with bad input."""
_LATENCY_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class _TransportCollector(Collector):
    """Turns the transport's counters (``GrpcTransport.stats``) into two metric families at
    scrape time: ``phalanx_transport_rejected_total{reason}`` for the ``rejected_*`` counters and
    ``phalanx_transport_events_total{event}`` for the rest."""

    def __init__(self, stats: Callable[[], Mapping[str, int]]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        rejected = CounterMetricFamily(
            "phalanx_transport_rejected",
            "Inbound peer calls the transport ended because of bad input, by reason.",
            labels=["reason"],
        )
        events = CounterMetricFamily(
            "phalanx_transport_events", "The transport's other counters, by event.", labels=["event"]
        )
        for key, value in sorted(self._stats().items()):
            if key.startswith("rejected_"):
                rejected.add_metric([key.removeprefix("rejected_")], value)
            else:
                events.add_metric([key], value)
        yield rejected
        yield events


class _KVCollector(Collector):
    """The KV service's shed calls (``phalanx_kv_shed_total{reason}``) and buffered bytes, and
    the sessions of the node's state machine, read at scrape time."""

    def __init__(self, node: RaftNode, kv_stats: Callable[[], Mapping[str, int]] | None) -> None:
        self._node = node
        self._kv_stats = kv_stats

    def collect(self) -> Iterator[Metric]:
        if self._kv_stats is not None:
            stats = self._kv_stats()
            shed = CounterMetricFamily(
                "phalanx_kv_shed",
                "KV calls ended to keep buffered bytes bounded, by reason "
                "(connection_bytes, total_bytes, stalled).",
                labels=["reason"],
            )
            for key, value in sorted(stats.items()):
                if key.startswith("shed_"):
                    shed.add_metric([key.removeprefix("shed_")], value)
            yield shed
            yield GaugeMetricFamily(
                "phalanx_kv_buffered_bytes",
                "Bytes the KV calls hold now (answers being written, requests being received).",
                value=stats.get("buffered_bytes", 0),
            )
            yield GaugeMetricFamily(
                "phalanx_kv_quota_used_bytes",
                "What counts against the KV quota: keys and values, and the log since the last snapshot.",
                value=stats.get("quota_used_bytes", 0),
            )
            yield GaugeMetricFamily(
                "phalanx_kv_quota_alarm",
                "1 while the KV service refuses writes that add data (the quota is reached).",
                value=stats.get("quota_alarm", 0),
            )
        session_stats = getattr(self._node.state_machine, "session_stats", None)
        if callable(session_stats):
            sessions = session_stats()
            yield GaugeMetricFamily(
                "phalanx_kv_sessions", "Client sessions the state machine keeps.", value=sessions["sessions"]
            )
            yield GaugeMetricFamily(
                "phalanx_kv_session_bytes",
                "What the sessions count against max_session_bytes.",
                value=sessions["session_bytes"],
            )
            yield CounterMetricFamily(
                "phalanx_kv_sessions_evicted",
                "Sessions forgotten (expired or evicted by a limit) since the state machine was "
                "created or restored.",
                value=sessions["sessions_evicted"],
            )


class NodeMetrics:
    """The metrics of one node. Give it the node and (optionally) callables returning the
    transport's counters, such as ``lambda: transport.stats``, and the KV service's buffer
    counters (``kv_stats=service.buffer_stats``). It registers itself as a
    listener of the node's events at once, so create it before (or soon after) starting the
    node: events before that are not counted."""

    def __init__(
        self,
        node: RaftNode,
        *,
        transport_stats: Callable[[], Mapping[str, int]] | None = None,
        kv_stats: Callable[[], Mapping[str, int]] | None = None,
    ) -> None:
        self.node = node
        self.registry = CollectorRegistry(auto_describe=True)
        """The registry every metric of this node lives in (no process-global state)."""
        r = self.registry
        self.term = Gauge("phalanx_term", "The node's current term.", registry=r)
        self.commit_index = Gauge(
            "phalanx_commit_index", "The highest log index known committed.", registry=r
        )
        self.applied_index = Gauge("phalanx_applied_index", "The highest log index applied.", registry=r)
        self.last_index = Gauge("phalanx_last_index", "The index of the last log entry.", registry=r)
        self.first_index = Gauge(
            "phalanx_first_index", "The index of the first entry kept in the log.", registry=r
        )
        self.role = Gauge(
            "phalanx_role", "1 for the node's current role, 0 for the others.", ["role"], registry=r
        )
        self.is_leader = Gauge("phalanx_is_leader", "1 if this node is the leader.", registry=r)
        self.healthy = Gauge(
            "phalanx_healthy", "1 unless storage refuses writes or the node failed.", registry=r
        )
        self.voters = Gauge("phalanx_voters", "Voters in the configuration.", registry=r)
        self.learners = Gauge("phalanx_learners", "Learners in the configuration.", registry=r)
        self.pending_proposals = Gauge(
            "phalanx_pending_proposals", "Proposals waiting to be applied.", registry=r
        )
        self.proposals = Counter(
            "phalanx_proposals",
            "Writes this node proposed as leader, by outcome (ok, or failed: not applied or unknown).",
            ["outcome"],
            registry=r,
        )
        self.kv_rejected = Counter(
            "phalanx_kv_rejected",
            "Client requests refused before reaching the log, by reason (cluster, invalid).",
            ["reason"],
            registry=r,
        )
        self.term_changes = Counter("phalanx_term_changes", "Times this node's term changed.", registry=r)
        self.elections_started = Counter(
            "phalanx_elections_started",
            "Elections this node started (as candidate; not pre-votes).",
            registry=r,
        )
        self.elections_won = Counter("phalanx_elections_won", "Elections this node won.", registry=r)
        self.leader_changes = Counter(
            "phalanx_leader_changes",
            "Times this node learned of a leader other than the one it knew last.",
            registry=r,
        )
        self.membership_changes = Counter(
            "phalanx_membership_changes",
            "Configuration entries applied on this node, by change.",
            ["change"],
            registry=r,
        )
        self.snapshots = Counter(
            "phalanx_snapshots",
            "Snapshots taken, restored (from storage or the leader), sent and failed to send.",
            ["event"],
            registry=r,
        )
        self.commit_latency = Histogram(
            "phalanx_commit_latency_seconds",
            "Time from receiving a write to its being applied (successful writes only).",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        for outcome in WRITE_OUTCOMES:
            self.proposals.labels(outcome)
        for reason in KV_REFUSALS:
            self.kv_rejected.labels(reason)
        for change in MEMBERSHIP_CHANGES:
            self.membership_changes.labels(change)
        for event in SNAPSHOT_EVENTS:
            self.snapshots.labels(event)
        for role in ROLES:
            self.role.labels(role).set(0)
        if transport_stats is not None:
            r.register(_TransportCollector(transport_stats))
        r.register(_KVCollector(node, kv_stats))
        self._last_known_leader: str | None = None
        node.add_listener(self.on_event)

    def on_event(self, event: NodeEvent) -> None:
        """Count one node event (registered with the node by the constructor)."""
        if isinstance(event, TermChanged):
            self.term_changes.inc()
        elif isinstance(event, ElectionStarted):
            self.elections_started.inc()
        elif isinstance(event, ElectionWon):
            self.elections_won.inc()
        elif isinstance(event, LeaderChanged):
            if event.leader is not None and event.leader != self._last_known_leader:
                self.leader_changes.inc()
                self._last_known_leader = event.leader
        elif isinstance(event, MembershipChanged):
            change = "bootstrap" if event.change is None else event.change.type.value
            self.membership_changes.labels(change).inc()
        elif isinstance(event, SnapshotTaken):
            self.snapshots.labels("taken").inc()
        elif isinstance(event, SnapshotRestored):
            self.snapshots.labels("restored").inc()
        elif isinstance(event, SnapshotSent):
            self.snapshots.labels("sent" if event.ok else "send_failed").inc()

    def sample(self) -> NodeStatus | None:
        """Read the node's status into the gauges; return it, or ``None`` if the node is not
        running."""
        try:
            st = self.node.status()
        except PhalanxError:
            self.healthy.set(0)
            self.is_leader.set(0)
            return None
        self.term.set(st.term)
        self.commit_index.set(st.commit)
        self.applied_index.set(st.applied)
        self.last_index.set(st.last_index)
        self.first_index.set(st.first_index)
        for role in {*ROLES, st.role}:
            self.role.labels(role).set(1 if role == st.role else 0)
        self.is_leader.set(1 if st.role == "leader" else 0)
        self.healthy.set(1 if st.healthy else 0)
        self.voters.set(len(st.voters))
        self.learners.set(len(st.learners))
        self.pending_proposals.set(st.pending_proposals)
        return st

    def observe_write(self, outcome: str, seconds: float) -> None:
        """Count one proposed write answered after ``seconds``: ``outcome`` is ``"ok"`` (applied;
        its latency is observed) or ``"failed"`` (one of :data:`WRITE_OUTCOMES`)."""
        self.proposals.labels(outcome).inc()
        if outcome == "ok":
            self.commit_latency.observe(seconds)

    def observe_refusal(self, reason: str) -> None:
        """Count a request refused before reaching the node (one of :data:`KV_REFUSALS`)."""
        self.kv_rejected.labels(reason).inc()

    def exposition(self) -> bytes:
        """Sample the node, then render every metric in the Prometheus text format."""
        self.sample()
        return generate_latest(self.registry)
