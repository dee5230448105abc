"""The gRPC transport over TLS and mutual TLS, with certificates made by the ``openssl`` CLI."""

from __future__ import annotations

import pathlib
from collections.abc import Callable
from typing import Any

import pytest

from phalanx_aio.core.types import ConfState, Message, MessageType, Snapshot, SnapshotMeta
from phalanx_aio.errors import ConfigError
from phalanx_aio.transport.grpc import (
    GrpcTransport,
    certificate_names,
    server_ssl_context,
)
from tests.transport.tls_harness import (
    OPENSSL,
    hb,
    link,
    mtls_client,
    mtls_server,
    node,
    pki,
)

__all__ = ["node", "pki"]  # the fixtures, imported for use here

pytestmark = pytest.mark.skipif(
    OPENSSL is None, reason="the openssl command is needed to make test certificates"
)


async def test_mutual_tls_delivers_both_ways(node: Callable[..., Any], pki: pathlib.Path) -> None:
    a, ra = await node("a", server_ssl=mtls_server(pki), client_ssl=mtls_client(pki))
    b, rb = await node("b", server_ssl=mtls_server(pki), client_ssl=mtls_client(pki))
    link(a, b)
    a.send([hb("a", "b", i) for i in range(3)])
    b.send([hb("b", "a", 7)])
    await rb.wait(lambda: len(rb.received) == 3)
    await ra.wait(lambda: len(ra.received) == 1)
    assert [m for _, m in rb.received] == [hb("a", "b", i) for i in range(3)]
    assert ra.received == [("b", hb("b", "a", 7))]
    assert ra.unreachable == rb.unreachable == []


@pytest.mark.parametrize("client_cert", [None, "rogue"], ids=["no-certificate", "foreign-ca"])
async def test_client_without_a_trusted_certificate_cannot_deliver(
    node: Callable[..., Any], pki: pathlib.Path, client_cert: str | None
) -> None:
    b, rb = await node("b", server_ssl=mtls_server(pki), client_ssl=mtls_client(pki))
    a, ra = await node("a", client_ssl=mtls_client(pki, client_cert))
    link(a, b)
    a.send([hb("a", "b", 1)])
    await ra.wait(lambda: ra.unreachable == ["b"])
    assert a.stats["streams_opened"] == 0 and a.stats["frames_sent"] == 0
    assert rb.received == []
    assert b.stats["frames_received"] == 0 and b.stats["inbound_streams"] == 0


async def test_plaintext_client_cannot_reach_a_tls_server(
    node: Callable[..., Any], pki: pathlib.Path
) -> None:
    b, rb = await node("b", server_ssl=mtls_server(pki), client_ssl=mtls_client(pki))
    a, ra = await node("a")
    link(a, b)
    a.send([hb("a", "b", 1)])
    await ra.wait(lambda: ra.unreachable == ["b"])
    assert rb.received == [] and b.stats["inbound_streams"] == 0


async def test_client_refuses_a_server_it_cannot_verify(node: Callable[..., Any], pki: pathlib.Path) -> None:
    rogue_server = server_ssl_context(str(pki / "rogue.pem"), str(pki / "rogue.key"))
    b, rb = await node("b", server_ssl=rogue_server)
    a, ra = await node("a", client_ssl=mtls_client(pki))
    link(a, b)
    a.send([hb("a", "b", 1)])
    await ra.wait(lambda: ra.unreachable == ["b"])
    assert rb.received == [] and a.stats["frames_sent"] == 0


# ---------------------------------------------------------------------- node ids bound to certificates


async def test_bound_node_ids_deliver_when_each_certificate_names_its_node(
    node: Callable[..., Any], pki: pathlib.Path
) -> None:
    a, ra = await node(
        "a", server_ssl=mtls_server(pki, "a"), client_ssl=mtls_client(pki, "a"), bind_node_ids=True
    )
    b, rb = await node(
        "b", server_ssl=mtls_server(pki, "b"), client_ssl=mtls_client(pki, "b"), bind_node_ids=True
    )
    link(a, b)
    a.send([hb("a", "b", 1)])
    b.send([hb("b", "a", 2)])
    await rb.wait(lambda: len(rb.received) == 1)
    await ra.wait(lambda: len(ra.received) == 1)
    assert rb.received == [("a", hb("a", "b", 1))] and ra.received == [("b", hb("b", "a", 2))]
    assert a.stats["rejected_identity"] == b.stats["rejected_identity"] == 0


@pytest.mark.parametrize("bind", [True, False])
async def test_a_certificate_of_another_node_cannot_speak_for_it(
    node: Callable[..., Any], pki: pathlib.Path, bind: bool
) -> None:
    # "a" holds a valid certificate of the cluster's CA, but one that names "b".
    b, rb = await node(
        "b", server_ssl=mtls_server(pki, "b"), client_ssl=mtls_client(pki, "b"), bind_node_ids=bind
    )
    a, ra = await node("a", client_ssl=mtls_client(pki, "b"))
    link(a, b)
    a.send([hb("a", "b", 1)])
    if bind:
        await ra.wait(lambda: ra.unreachable == ["b"])
        assert rb.received == [] and b.stats["rejected_identity"] >= 1
        assert b.stats["frames_received"] == 0
    else:  # without the binding, any certificate of the CA may claim any id
        await rb.wait(lambda: len(rb.received) == 1)
        assert rb.received == [("a", hb("a", "b", 1))]


@pytest.mark.parametrize("cert", ["a", "b"], ids=["own-certificate", "another-nodes-certificate"])
async def test_a_snapshot_is_accepted_only_from_the_node_its_certificate_names(
    node: Callable[..., Any], pki: pathlib.Path, cert: str
) -> None:
    b, rb = await node(
        "b", server_ssl=mtls_server(pki, "b"), client_ssl=mtls_client(pki, "b"), bind_node_ids=True
    )
    a, ra = await node("a", client_ssl=mtls_client(pki, cert))
    link(a, b)
    conf = ConfState(voters=frozenset({"a", "b"}))
    a.send([Message(MessageType.SNAP, "b", "a", 3, snapshot=Snapshot(SnapshotMeta(9, 3, conf), b"state"))])
    await ra.wait(lambda: len(ra.snapshot_status) == 1)
    if cert == "a":
        assert ra.snapshot_status == [("b", True)] and b.stats["snapshots_received"] == 1
    else:
        assert ra.snapshot_status == [("b", False)] and b.stats["snapshots_received"] == 0
        assert b.stats["rejected_identity"] >= 1
        assert not any(m.type is MessageType.SNAP for _, m in rb.received)


def test_bind_node_ids_needs_mutual_tls(pki: pathlib.Path) -> None:
    one_way = server_ssl_context(str(pki / "b.pem"), str(pki / "b.key"))  # no client certificates asked
    for server_ssl in (None, one_way):
        with pytest.raises(ConfigError, match="bind_node_ids needs mutual TLS"):
            GrpcTransport(
                node_id="b", cluster_id="c1", listen="127.0.0.1:0", server_ssl=server_ssl, bind_node_ids=True
            )


def test_certificate_names() -> None:
    cert = {
        "subject": ((("countryName", "EU"),), (("commonName", "n1"),)),
        "subjectAltName": (("DNS", "n1.internal"), ("IP Address", "10.0.0.1"), ("URI", "spiffe://c/n1")),
    }
    assert certificate_names(cert) == {"n1", "n1.internal", "spiffe://c/n1"}
    assert certificate_names(None) == certificate_names({}) == frozenset()
