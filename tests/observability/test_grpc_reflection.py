"""Standard probes on a node's port, called the way stock tools call them: server reflection
through grpcio's own reflection client (what grpcurl does: list the services, fetch the
descriptors, build the messages from them, call), and the health service through grpcio's
generated health stub (what Kubernetes gRPC probes and grpc_health_probe do)."""

from __future__ import annotations

import asyncio
import importlib.util
import pathlib
import subprocess
import sys
from collections.abc import AsyncIterator

import pytest

from phalanx_aio import Config, MemoryStorage, RaftNode
from phalanx_aio._net import free_loopback_ports
from phalanx_aio.kv import KVService
from phalanx_aio.observability import HealthService, ReflectionService
from phalanx_aio.observability.grpc_reflection import _fields, load_descriptors
from phalanx_aio.transport.grpc import GrpcTransport
from tests.node.harness import Counter

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _absent(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is None
    except ModuleNotFoundError:  # its parent package is missing
        return True


STOCK = [m for m in ("grpc", "grpc_reflection", "grpc_health", "google.protobuf") if _absent(m)]
needs_stock = pytest.mark.skipif(
    bool(STOCK),
    reason=f"needs the stock grpcio clients ({', '.join(STOCK)} missing: the test extra installs them)",
)


@pytest.fixture
async def address(tmp_path: pathlib.Path) -> AsyncIterator[tuple[str, RaftNode]]:
    (port,) = free_loopback_ports(1)
    health = HealthService(watch_interval=0.05)
    transport = GrpcTransport(
        node_id="r1",
        cluster_id="c",
        listen=f"127.0.0.1:{port}",
        extra_handlers=[KVService(), health, ReflectionService()],
    )
    node = RaftNode(
        "r1",
        address=f"127.0.0.1:{port}",
        peers={},
        state_machine=Counter(),
        storage=MemoryStorage("r1"),
        config=Config.lan(tick_interval=0.01),
        transport=transport,
    )
    health.attach(node)
    async with node:
        await node.wait_for_leader(10)
        yield f"127.0.0.1:{port}", node


def _grpcurl_like(target: str) -> dict[str, object]:
    """List, describe and call through reflection alone, as grpcurl does (blocking: grpcio)."""
    import grpc
    from google.protobuf import descriptor_pool, message_factory
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )

    with grpc.insecure_channel(target) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = sorted(database.get_services())
        pool = descriptor_pool.DescriptorPool(database)
        kv = pool.FindServiceByName("phalanx.v1.KV")
        health = pool.FindServiceByName("grpc.health.v1.Health")
        check = health.methods_by_name["Check"]
        request_class = message_factory.GetMessageClass(check.input_type)
        response_class = message_factory.GetMessageClass(check.output_type)
        call = channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=response_class.FromString,
        )
        reply = call(request_class(service="phalanx.v1.KV"), timeout=10)
        status_name = check.output_type.fields_by_name["status"].enum_type.values_by_number[reply.status].name
        return {
            "services": services,
            "kv_methods": sorted(m.name for m in kv.methods),
            "raft_file": pool.FindServiceByName("phalanx.v1.RaftPeer").file.name,
            "status": status_name,
        }


@needs_stock
async def test_reflection_serves_what_grpcurl_needs(address: tuple[str, RaftNode]) -> None:
    target, _ = address
    seen = await asyncio.to_thread(_grpcurl_like, target)
    assert seen["services"] == [
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "phalanx.v1.KV",
        "phalanx.v1.RaftPeer",
    ]
    assert "Get" in seen["kv_methods"]  # type: ignore[operator]
    assert seen["raft_file"] == "phalanx/v1/raft.proto"
    assert seen["status"] == "SERVING"


def _probe(target: str, service: str) -> tuple[str, str | None]:
    """A Kubernetes-style gRPC probe: grpc.health.v1 Check through grpcio's stub."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        except grpc.RpcError as exc:
            return "error", exc.code().name
        watch = stub.Watch(health_pb2.HealthCheckRequest(service=service), timeout=10)
        first = next(iter(watch))
        watch.cancel()
        assert first.status == reply.status
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status), None


@needs_stock
async def test_health_answers_a_stock_probe_and_follows_the_node(address: tuple[str, RaftNode]) -> None:
    target, node = address
    for service in ("", "phalanx.v1.KV", "phalanx.v1.RaftPeer"):
        assert await asyncio.to_thread(_probe, target, service) == ("SERVING", None)
    assert await asyncio.to_thread(_probe, target, "no.such.Service") == ("error", "NOT_FOUND")
    node._failure = RuntimeError("the node's loop failed (simulated)")
    try:
        assert await asyncio.to_thread(_probe, target, "") == ("NOT_SERVING", None)
    finally:
        node._failure = None


def _response(reply: bytes) -> dict[int, bytes]:
    return {number: value for number, _wire, value in _fields(reply)}


def test_unknown_symbols_and_bad_requests_get_error_responses() -> None:
    service = ReflectionService()
    request = b"\x22" + bytes([len(b"no.Such")]) + b"no.Such"  # file_containing_symbol
    error = _response(_response(service.answer(request))[7])
    assert error[1] == 5 and b"no.Such" in error[2]  # NOT_FOUND
    assert _response(_response(service.answer(b""))[7])[1] == 3  # no request: INVALID_ARGUMENT
    descriptors = load_descriptors()
    assert descriptors.symbols["phalanx.v1.KV"] == "phalanx/v1/kv.proto"
    assert descriptors.symbols["grpc.health.v1.Health.Check"] == "grpc/health/v1/health.proto"


@pytest.mark.skipif(_absent("grpc_tools"), reason="needs grpcio-tools (protoc; the codegen extra)")
def test_the_shipped_descriptors_are_fresh() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_reflection.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
