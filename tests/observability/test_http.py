"""The observability endpoint of one real node (RaftNode + SQLite + gRPC on loopback):
/healthz, /status, /metrics (parsed with prometheus_client's own parser) and bad requests."""

from __future__ import annotations

import asyncio
import json
import pathlib
from collections.abc import AsyncIterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from phalanx_aio import Config, RaftNode, SQLiteStorage
from phalanx_aio._net import free_loopback_ports
from phalanx_aio.cli.main import build_parser
from phalanx_aio.cli.serve import resolve_settings
from phalanx_aio.errors import ConfigError
from phalanx_aio.kv import KVClient, KVStateMachine, MeteredKVService
from phalanx_aio.kv.client import RequestRefused
from phalanx_aio.kv.messages import ErrorCode
from phalanx_aio.observability import NodeMetrics, ObservabilityServer
from phalanx_aio.transport.grpc import GrpcTransport

DEADLINE = 15.0
CLUSTER = "obs-test"


class Single:
    def __init__(self, node: RaftNode, address: str, http: ObservabilityServer) -> None:
        self.node, self.address, self.http = node, address, http


@pytest.fixture
async def single(tmp_path: pathlib.Path) -> AsyncIterator[Single]:
    address = f"127.0.0.1:{free_loopback_ports(1)[0]}"
    service = MeteredKVService()
    transport = GrpcTransport(node_id="n1", cluster_id=CLUSTER, listen=address, extra_handlers=[service])
    node = RaftNode(
        "n1",
        address=address,
        peers={},
        state_machine=KVStateMachine(),
        storage=SQLiteStorage(tmp_path / "n1.db"),
        config=Config.lan(tick_interval=0.02),
        cluster_id=CLUSTER,
        transport=transport,
    )
    service.attach(node)
    service.metrics = NodeMetrics(
        node, transport_stats=lambda: transport.stats, kv_stats=service.buffer_stats
    )
    http = ObservabilityServer(node, service.metrics)
    async with node, http:
        yield Single(node, address, http)


async def request(port: int, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), DEADLINE)
    try:
        writer.write(raw)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), DEADLINE)
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("ascii").split("\r\n")
    version, code, _reason = lines[0].split(" ", 2)
    assert version == "HTTP/1.1"
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    assert int(headers["content-length"]) == len(body) or raw.startswith(b"HEAD")
    return int(code), headers, body


async def get(port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    return await request(port, f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())


async def test_healthz_status_and_metrics(single: Single) -> None:
    node, port = single.node, single.http.port
    await node.wait_for_leader(DEADLINE)
    code, headers, body = await get(port, "/healthz")
    assert (code, body) == (200, b"ok\n")
    assert headers["connection"] == "close"

    code, headers, body = await get(port, "/status?verbose=1")
    assert code == 200 and headers["content-type"] == "application/json"
    doc = json.loads(body)
    assert {"id", "role", "term", "leader", "commit", "applied", "voters", "learners", "healthy"} <= set(doc)
    assert (doc["id"], doc["role"], doc["leader"], doc["voters"]) == ("n1", "leader", "n1", ["n1"])
    assert "core" not in doc

    async with KVClient([single.address], cluster_id=CLUSTER, timeout=DEADLINE) as kv:
        for i in range(5):
            await kv.put(b"k%d" % i, b"v")
        assert await kv.get(b"k0") == b"v"

    code, headers, body = await get(port, "/metrics")
    assert code == 200 and headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    expected = {
        "phalanx_term",
        "phalanx_commit_index",
        "phalanx_applied_index",
        "phalanx_role",
        "phalanx_is_leader",
        "phalanx_healthy",
        "phalanx_proposals",
        "phalanx_commit_latency_seconds",
        "phalanx_elections_started",
        "phalanx_elections_won",
        "phalanx_leader_changes",
        "phalanx_term_changes",
        "phalanx_membership_changes",
        "phalanx_snapshots",
        "phalanx_transport_rejected",
        "phalanx_kv_rejected",
        "phalanx_transport_events",
        "phalanx_kv_shed",
        "phalanx_kv_buffered_bytes",
        "phalanx_kv_sessions",
        "phalanx_kv_session_bytes",
        "phalanx_kv_sessions_evicted",
    }
    assert expected <= set(families)

    def value(name: str, **labels: str) -> float:
        for s in families[name.removesuffix("_total").removesuffix("_count")].samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
        raise AssertionError(f"no sample {name} {labels}")

    st = node.status()
    assert value("phalanx_is_leader") == 1
    assert value("phalanx_term") == st.term >= 1
    assert value("phalanx_role", role="leader") == 1 and value("phalanx_role", role="follower") == 0
    assert value("phalanx_applied_index") >= 5
    assert value("phalanx_proposals_total", outcome="ok") == 5
    assert value("phalanx_proposals_total", outcome="failed") == 0
    assert value("phalanx_commit_latency_seconds_count") == 5
    assert value("phalanx_transport_rejected_total", reason="cluster") == 0
    # One founding configuration, one election started and won, one leader learned: exactly.
    assert value("phalanx_membership_changes_total", change="bootstrap") == 1
    assert value("phalanx_membership_changes_total", change="add_learner") == 0
    assert value("phalanx_elections_started_total") == value("phalanx_elections_won_total") == st.term - 1
    assert value("phalanx_leader_changes_total") == 1
    assert value("phalanx_term_changes_total") == st.term - 1
    assert value("phalanx_snapshots_total", event="taken") == 0
    assert value("phalanx_kv_rejected_total", reason="cluster") == 0
    # The limits' gauges and counters (issue 23): one session (the client's), nothing shed.
    assert value("phalanx_kv_sessions") == 1 and value("phalanx_kv_session_bytes") > 0
    assert value("phalanx_kv_sessions_evicted_total") == 0
    assert value("phalanx_kv_shed_total", reason="stalled") == 0
    assert value("phalanx_kv_buffered_bytes") == 0
    assert value("phalanx_transport_events_total", event="connections_refused") == 0

    # A client of another cluster is refused, and counted.
    async with KVClient([single.address], cluster_id="someone-else", timeout=DEADLINE) as foreign:
        with pytest.raises(RequestRefused) as refused:
            await foreign.put(b"k", b"v")
        assert refused.value.code is ErrorCode.WRONG_CLUSTER
    _, _, body = await get(port, "/metrics")
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    assert value("phalanx_kv_rejected_total", reason="cluster") == 1
    assert value("phalanx_proposals_total", outcome="failed") == 0


async def test_bad_requests(single: Single) -> None:
    port = single.http.port
    code, _, body = await get(port, "/nope")
    assert (code, body) == (404, b"not found\n")
    code, headers, _ = await request(port, b"POST /healthz HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
    assert code == 405 and headers["allow"] == "GET, HEAD"
    for raw in (
        b"GARBAGE\r\n\r\n",
        b"GET /healthz SPDY/3\r\n\r\n",
        b"GET healthz HTTP/1.1\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nno colon here\r\n\r\n",
        b"GET /" + b"x" * 10_000 + b" HTTP/1.1\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\n",  # the client stops before the blank line
    ):
        writer_eof = raw.endswith(b"HTTP/1.1\r\n")
        if writer_eof:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(raw)
            writer.write_eof()
            data = await asyncio.wait_for(reader.read(), DEADLINE)
            writer.close()
            assert data.startswith(b"HTTP/1.1 400 "), raw
        else:
            code, _, _ = await request(port, raw)
            assert code == 400, raw
    code, headers, body = await request(port, b"HEAD /healthz HTTP/1.1\r\n\r\n")
    assert code in (200, 503) and body == b"" and int(headers["content-length"]) > 0


async def test_healthz_503_when_node_not_running(tmp_path: pathlib.Path) -> None:
    node = RaftNode(
        "n1",
        address="127.0.0.1:1",
        peers={"n2": "127.0.0.1:2"},
        state_machine=KVStateMachine(),
        storage=SQLiteStorage(tmp_path / "n1.db"),
        cluster_id=CLUSTER,
    )
    async with ObservabilityServer(node) as http:
        code, _, body = await get(http.port, "/healthz")
        assert code == 503 and body.startswith(b"not running")
        code, _, body = await get(http.port, "/status")
        assert code == 503 and "error" in json.loads(body)
        code, _, body = await get(http.port, "/metrics")
        families = {f.name for f in text_string_to_metric_families(body.decode())}
        assert code == 200 and "phalanx_healthy" in families and "phalanx_transport_events" not in families


def test_serve_http_setting(tmp_path: pathlib.Path) -> None:
    base = ["serve", "--id", "n1", "--listen", "127.0.0.1:7001", "--data-dir", str(tmp_path)]
    parser = build_parser()
    assert resolve_settings(parser.parse_args(base), {}).http is None
    assert resolve_settings(parser.parse_args(base), {"PHALANX_HTTP": "0.0.0.0:9100"}).http == "0.0.0.0:9100"
    flag = parser.parse_args([*base, "--http", "127.0.0.1:9101"])
    assert resolve_settings(flag, {"PHALANX_HTTP": "0.0.0.0:9100"}).http == "127.0.0.1:9101"
    cfg = tmp_path / "n1.toml"
    cfg.write_text('http = "127.0.0.1:9102"\n')
    assert resolve_settings(parser.parse_args([*base, "--config", str(cfg)]), {}).http == "127.0.0.1:9102"
    with pytest.raises(ConfigError, match="--http"):
        resolve_settings(parser.parse_args([*base, "--http", "nope"]), {})
