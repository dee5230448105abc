"""A throwaway PKI (openssl) and TLS-enabled transports for tests."""

from __future__ import annotations

import pathlib
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from phalanx_aio.core.types import Message, MessageType
from phalanx_aio.transport.grpc import (
    GrpcTransport,
    client_ssl_context,
    server_ssl_context,
)
from tests.transport.harness import Recorder

DEADLINE = 10.0
OPENSSL = shutil.which("openssl")


def openssl(*args: str, cwd: pathlib.Path) -> None:
    assert OPENSSL is not None
    subprocess.run([OPENSSL, *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_ca(d: pathlib.Path, name: str) -> None:
    openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2", "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=d,
    )  # fmt: skip


def make_leaf(d: pathlib.Path, name: str, ca: str) -> None:
    (d / f"{name}.ext").write_text(
        "basicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth,clientAuth\n"
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid\n"
    )
    openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}",
        cwd=d,
    )  # fmt: skip
    openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
        "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext",
        cwd=d,
    )  # fmt: skip


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """A cluster CA with a node certificate and one per node id ("a", "b": their common
    names), and a rogue CA with its own certificate."""
    d = tmp_path_factory.mktemp("pki")
    make_ca(d, "ca")
    make_leaf(d, "node", "ca")
    make_leaf(d, "a", "ca")
    make_leaf(d, "b", "ca")
    make_ca(d, "rogue-ca")
    make_leaf(d, "rogue", "rogue-ca")
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
