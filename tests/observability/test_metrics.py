"""NodeMetrics beyond the HTTP endpoint: latency histograms timed inside the node, gauges that
are current however the registry is exposed (here an ASGI app), process and build metrics,
and the transport's bytes and frames in counters of their own."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from prometheus_client import generate_latest, make_asgi_app
from prometheus_client.parser import text_string_to_metric_families

from phalanx_aio import Config, MemoryStorage, RaftNode
from phalanx_aio.observability import NodeMetrics
from phalanx_aio.observability.metrics import _TransportCollector
from phalanx_aio.transport.memory import MemoryNetwork, MemoryTransport
from tests.node.harness import Counter


@pytest.fixture
async def node() -> AsyncIterator[RaftNode]:
    n = RaftNode(
        "m1",
        address="m1",
        peers={},
        state_machine=Counter(),
        storage=MemoryStorage("m1"),
        config=Config.lan(tick_interval=0.01),
        transport=MemoryTransport("m1", MemoryNetwork()),
    )
    async with n:
        await n.wait_for_leader(10)
        yield n


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): float(s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def scrape_asgi(app: object) -> str:
    """GET /metrics from an ASGI app, as a server that mounted it would."""
    sent: list[dict[str, object]] = []

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": "/metrics", "query_string": b"", "headers": []}
    await app(scope, receive, send)  # type: ignore[operator]
    return b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body").decode()  # type: ignore[misc]


async def test_latencies_are_timed_inside_the_node_and_gauges_are_current_in_an_asgi_app(
    node: RaftNode,
) -> None:
    metrics = NodeMetrics(node)
    app = make_asgi_app(registry=metrics.registry)
    before = samples(await scrape_asgi(app))
    for _ in range(5):
        await node.propose(b"incr 1")
    await node.propose_many([b"incr 1", b"incr 1"])
    after = samples(await scrape_asgi(app))  # nobody called sample() or exposition()
    st = node.status()
    assert after[("phalanx_applied_index", ())] == st.applied > before[("phalanx_applied_index", ())]
    assert after[("phalanx_commit_index", ())] == st.commit
    assert after[("phalanx_role", (("role", "leader"),))] == 1 and after[("phalanx_is_leader", ())] == 1
    assert after[("phalanx_propose_seconds_count", ())] == 6  # five calls and one batch
    assert after[("phalanx_storage_save_seconds_count", ())] >= 1
    assert after[("phalanx_apply_seconds_count", ())] >= 1
    assert after[("phalanx_apply_seconds_sum", ())] > 0
    # generate_latest on the registry (how a custom exporter would read it) agrees.
    direct = samples(generate_latest(metrics.registry).decode())
    assert direct[("phalanx_applied_index", ())] == st.applied


async def test_process_and_build_metrics(node: RaftNode) -> None:
    import phalanx_aio

    found = samples(NodeMetrics(node).exposition().decode())
    build = [labels for name, labels in found if name == "phalanx_build_info"]
    assert len(build) == 1 and dict(build[0])["version"] == phalanx_aio.__version__
    assert "python" in dict(build[0]) and "grpclib" in dict(build[0])
    names = {name for name, _ in found}
    assert "python_info" in names
    assert "process_cpu_seconds_total" in names  # Linux: read from /proc


async def test_a_closed_node_reads_as_unhealthy_not_as_an_error() -> None:
    n = RaftNode(
        "m2",
        address="m2",
        peers={},
        state_machine=Counter(),
        storage=MemoryStorage("m2"),
        config=Config.lan(tick_interval=0.01),
        transport=MemoryTransport("m2", MemoryNetwork()),
    )
    metrics = NodeMetrics(n)
    found = samples(metrics.exposition().decode())  # never started
    assert found[("phalanx_healthy", ())] == 0 and found[("phalanx_is_leader", ())] == 0
    assert ("phalanx_term", ()) not in found


def test_bytes_and_frames_have_counters_of_their_own() -> None:
    stats = {
        "bytes_sent": 1000,
        "bytes_received": 900,
        "frames_sent": 7,
        "frames_received": 6,
        "messages_sent": 40,
        "rejected_cluster": 1,
    }
    families = {f.name: f for f in _TransportCollector(lambda: stats).collect()}
    assert {s.labels["direction"]: s.value for s in families["phalanx_transport_bytes"].samples} == {
        "sent": 1000,
        "received": 900,
    }
    assert {s.labels["direction"]: s.value for s in families["phalanx_transport_frames"].samples} == {
        "sent": 7,
        "received": 6,
    }
    events = {s.labels["event"]: s.value for s in families["phalanx_transport_events"].samples}
    assert events == {"messages_sent": 40}
    assert [s.labels["reason"] for s in families["phalanx_transport_rejected"].samples] == ["cluster"]
