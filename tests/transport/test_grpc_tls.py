"""The gRPC transport over TLS and mutual TLS, with certificates made by the ``openssl`` CLI."""

from __future__ import annotations

import asyncio
import pathlib
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import pytest

from phalanx_aio.core.types import ConfState, Message, MessageType, Snapshot, SnapshotMeta
from phalanx_aio.errors import ConfigError
from phalanx_aio.transport.grpc import (
    GrpcTransport,
    certificate_names,
    client_ssl_context,
    server_ssl_context,
)

DEADLINE = 10.0
OPENSSL = shutil.which("openssl")

pytestmark = pytest.mark.skipif(
    OPENSSL is None, reason="the openssl command is needed to make test certificates"
)


class Recorder:
    def __init__(self) -> None:
        self.received: list[tuple[str, Message]] = []
        self.unreachable: list[str] = []
        self.snapshots: list[tuple[str, bool]] = []
        self._changed = asyncio.Event()

    def on_messages(self, sender: str, messages: Sequence[Message]) -> None:
        self.received.extend((sender, m) for m in messages)
        self._changed.set()

    def on_unreachable(self, peer: str) -> None:
        self.unreachable.append(peer)
        self._changed.set()

    def on_snapshot_status(self, peer: str, ok: bool) -> None:
        self.snapshots.append((peer, ok))
        self._changed.set()

    async def wait(self, predicate: Callable[[], bool]) -> None:
        async def loop() -> None:
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(loop(), DEADLINE)


def _openssl(*args: str, cwd: pathlib.Path) -> None:
    assert OPENSSL is not None
    subprocess.run([OPENSSL, *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _make_ca(d: pathlib.Path, name: str) -> None:
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2", "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=d,
    )  # fmt: skip


def _make_leaf(d: pathlib.Path, name: str, ca: str) -> None:
    (d / f"{name}.ext").write_text(
        "basicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth,clientAuth\n"
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid\n"
    )
    _openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}",
        cwd=d,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
        "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext",
        cwd=d,
    )  # fmt: skip


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """A cluster CA with a node certificate and one per node id ("a", "b": their common
    names), and a rogue CA with its own certificate."""
    d = tmp_path_factory.mktemp("pki")
    _make_ca(d, "ca")
    _make_leaf(d, "node", "ca")
    _make_leaf(d, "a", "ca")
    _make_leaf(d, "b", "ca")
    _make_ca(d, "rogue-ca")
    _make_leaf(d, "rogue", "rogue-ca")
    return d


def mtls_server(d: pathlib.Path, cert: str = "node") -> ssl.SSLContext:
    return server_ssl_context(str(d / f"{cert}.pem"), str(d / f"{cert}.key"), cafile=str(d / "ca.pem"))


def mtls_client(d: pathlib.Path, cert: str | None = "node") -> ssl.SSLContext:
    if cert is None:
        return client_ssl_context(str(d / "ca.pem"))
    return client_ssl_context(
        str(d / "ca.pem"), certfile=str(d / f"{cert}.pem"), keyfile=str(d / f"{cert}.key")
    )


@pytest.fixture
async def node() -> AsyncIterator[Callable[..., Any]]:
    made: list[GrpcTransport] = []

    async def make(node_id: str, **kwargs: Any) -> tuple[GrpcTransport, Recorder]:
        t = GrpcTransport(
            node_id=node_id,
            cluster_id="c1",
            listen="127.0.0.1:0",
            backoff_initial=0.01,
            backoff_max=0.1,
            connect_timeout=3.0,
            **kwargs,
        )
        made.append(t)
        rec = Recorder()
        await t.start(rec)
        return t, rec

    yield make
    for t in made:
        await t.aclose()


def hb(frm: str, to: str, seq: int) -> Message:
    return Message(MessageType.HEARTBEAT, to, frm, 1, seq=seq)


def link(a: GrpcTransport, b: GrpcTransport) -> None:
    a.set_peers({b.node_id: b.address})
    b.set_peers({a.node_id: a.address})


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
    await ra.wait(lambda: len(ra.snapshots) == 1)
    if cert == "a":
        assert ra.snapshots == [("b", True)] and b.stats["snapshots_received"] == 1
    else:
        assert ra.snapshots == [("b", False)] and b.stats["snapshots_received"] == 0
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
