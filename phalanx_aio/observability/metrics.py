"""Prometheus metrics of one node, kept in a per-node :class:`~prometheus_client.CollectorRegistry`.

:class:`NodeMetrics` counts the node's events exactly: it listens to them (elections, leader
and term changes, membership changes, snapshots; see :mod:`phalanx_aio.node.events`), so no
change between two scrapes is lost. It times proposals, storage writes and applies inside the
node (:meth:`RaftNode.set_latency_observer <phalanx_aio.node.RaftNode.set_latency_observer>`).
Everything read from the node's state (:meth:`RaftNode.status()
<phalanx_aio.node.RaftNode.status>`, the transport's and the KV service's counters) is read by
collectors when the registry is collected, so the values are current however the registry is
exposed: :meth:`NodeMetrics.exposition`, ``prometheus_client.generate_latest(registry)`` or an
ASGI or WSGI app mounted on the registry. The registry also carries the process's metrics
(``process_*``, ``python_*``) and ``phalanx_build_info``. :class:`~phalanx_aio.kv.MeteredKVService`
reports the KV service's writes and refusals to :meth:`NodeMetrics.observe_write` and
:meth:`NodeMetrics.observe_refusal`.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterator, Mapping
from typing import Final

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
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

__all__ = [
    "KV_REFUSALS",
    "LATENCIES",
    "MEMBERSHIP_CHANGES",
    "ROLES",
    "SNAPSHOT_EVENTS",
    "TRANSPORT_VOLUMES",
    "WRITE_OUTCOMES",
    "NodeMetrics",
]

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
_FINE_BUCKETS: Final = (
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    10.0,
)

LATENCIES: Final = {
    "propose": (
        "phalanx_propose_seconds",
        "RaftNode.propose/propose_many calls that succeeded, from the call to the result "
        "(committed and applied on this node).",
    ),
    "storage_save": (
        "phalanx_storage_save_seconds",
        "One write of log entries and hard state to storage, fsync included.",
    ),
    "apply": (
        "phalanx_apply_seconds",
        "Applying one batch of committed entries (one loop turn's worth) to the state machine.",
    ),
}
"""The node's latency histograms: the kind :meth:`RaftNode.set_latency_observer` reports -> (the
histogram's name, its help)."""

TRANSPORT_VOLUMES: Final = {"bytes": "phalanx_transport_bytes", "frames": "phalanx_transport_frames"}
"""The transport's volume counters, each with a ``direction`` label (``sent``, ``received``);
``messages`` stays among the events (``messages_sent``, ``messages_received``)."""


class _StatusCollector(Collector):
    """The gauges read from :meth:`RaftNode.status` each time the registry is collected."""

    def __init__(self, node: RaftNode) -> None:
        self._node = node

    def collect(self) -> Iterator[Metric]:
        try:
            st: NodeStatus | None = self._node.status()
        except PhalanxError:
            st = None
        healthy = GaugeMetricFamily("phalanx_healthy", "1 unless storage refuses writes or the node failed.")
        healthy.add_metric([], 1 if st is not None and st.healthy else 0)
        yield healthy
        is_leader = GaugeMetricFamily("phalanx_is_leader", "1 if this node is the leader.")
        is_leader.add_metric([], 1 if st is not None and st.role == "leader" else 0)
        yield is_leader
        role = GaugeMetricFamily(
            "phalanx_role", "1 for the node's current role, 0 for the others.", labels=["role"]
        )
        current = st.role if st is not None else None
        for name in sorted({*ROLES, *([current] if current else [])}):
            role.add_metric([name], 1 if name == current else 0)
        yield role
        if st is None:
            return
        for name, help_text, value in (
            ("phalanx_term", "The node's current term.", st.term),
            ("phalanx_commit_index", "The highest log index known committed.", st.commit),
            ("phalanx_applied_index", "The highest log index applied.", st.applied),
            ("phalanx_last_index", "The index of the last log entry.", st.last_index),
            ("phalanx_first_index", "The index of the first entry kept in the log.", st.first_index),
            ("phalanx_voters", "Voters in the configuration.", len(st.voters)),
            ("phalanx_learners", "Learners in the configuration.", len(st.learners)),
            ("phalanx_pending_proposals", "Proposals waiting to be applied.", st.pending_proposals),
        ):
            yield GaugeMetricFamily(name, help_text, value=value)


def _build_info() -> dict[str, str]:
    import importlib.metadata

    from phalanx_aio._version import __version__

    info = {"version": __version__, "python": platform.python_version()}
    for dist in ("grpclib", "aiosqlite"):
        try:
            info[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:  # pragma: no cover
            info[dist] = ""
    return info


class _BuildInfoCollector(Collector):
    def __init__(self) -> None:
        self._info = _build_info()

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "phalanx_build_info",
            "Always 1; the labels say which phalanx_aio, Python and I/O libraries run.",
            labels=list(self._info),
        )
        family.add_metric(list(self._info.values()), 1)
        yield family


class _TransportCollector(Collector):
    """Turns the transport's counters (``GrpcTransport.stats``) into metric families at scrape
    time: ``phalanx_transport_rejected_total{reason}`` for the ``rejected_*`` counters,
    ``phalanx_transport_bytes_total{direction}`` and ``phalanx_transport_frames_total{direction}``
    for the volumes, and ``phalanx_transport_events_total{event}`` for the rest."""

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
        volumes = {
            kind: CounterMetricFamily(
                name, f"{kind.capitalize()} of peer messages, by direction.", labels=["direction"]
            )
            for kind, name in TRANSPORT_VOLUMES.items()
        }
        for key, value in sorted(self._stats().items()):
            kind, _, direction = key.partition("_")
            if key.startswith("rejected_"):
                rejected.add_metric([key.removeprefix("rejected_")], value)
            elif kind in volumes and direction in ("sent", "received"):
                volumes[kind].add_metric([direction], value)
            else:
                events.add_metric([key], value)
        yield rejected
        yield from volumes.values()
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
        r.register(_StatusCollector(node))  # gauges read from the node at collection
        r.register(_BuildInfoCollector())
        ProcessCollector(registry=r)  # process_cpu_seconds_total, process_resident_memory_bytes, ...
        PlatformCollector(registry=r)  # python_info
        self.latency = {
            kind: Histogram(name, help_text, buckets=_FINE_BUCKETS, registry=r)
            for kind, (name, help_text) in LATENCIES.items()
        }
        """The latency histograms, by the kind the node reports (see :data:`LATENCIES`)."""
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
        if transport_stats is not None:
            r.register(_TransportCollector(transport_stats))
        r.register(_KVCollector(node, kv_stats))
        self._last_known_leader: str | None = None
        node.add_listener(self.on_event)
        node.set_latency_observer(self.observe_latency)

    def observe_latency(self, kind: str, seconds: float) -> None:
        """Record one latency the node reports (registered with the node by the constructor)."""
        histogram = self.latency.get(kind)
        if histogram is not None:
            histogram.observe(seconds)

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
        """The node's status, or ``None`` if the node is not running. (The gauges read the node
        themselves whenever the registry is collected; nothing needs to call this first.)"""
        try:
            return self.node.status()
        except PhalanxError:
            return None

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
        """Every metric in the Prometheus text format, gauges read from the node now."""
        return generate_latest(self.registry)
