"""``phalanx-aio serve --tls-*`` end to end: three processes on loopback with mutual TLS, the
client commands with a valid certificate, and clients without one refused in one line.

Certificates are made with the ``openssl`` CLI by the helpers of the transport's TLS tests. The
servers log JSON lines (``--log-format json``), which are checked too.
"""

from __future__ import annotations

import json
import pathlib
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest

from phalanx_aio._net import free_loopback_ports
from phalanx_aio.cli.main import main
from tests.transport.tls_harness import OPENSSL, make_ca, make_leaf

pytestmark = pytest.mark.skipif(OPENSSL is None, reason="the openssl command is needed to make certificates")

IDS = ("n1", "n2", "n3")
DEADLINE = 20.0  # generous: three interpreters start on a shared machine
CLUSTER = "tls-e2e"


class TLSCluster:
    def __init__(self, pki: pathlib.Path, work: pathlib.Path, *, bind_ids: bool = False) -> None:
        self.pki = pki
        self.work = work
        self.bind_ids = bind_ids  # each node gets a certificate naming it, and --tls-bind-ids
        self.addr = {nid: f"127.0.0.1:{p}" for nid, p in zip(IDS, free_loopback_ports(3), strict=True)}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    @property
    def endpoints(self) -> str:
        return ",".join(self.addr.values())

    def tls(self, name: str | None = "node", ca: str = "ca") -> list[str]:
        args = ["--tls-ca", str(self.pki / f"{ca}.pem")]
        if name is not None:
            args += ["--tls-cert", str(self.pki / f"{name}.pem"), "--tls-key", str(self.pki / f"{name}.key")]
        return args

    def start(self) -> None:
        for nid in IDS:
            cmd = [sys.executable, "-m", "phalanx_aio.cli.main", "serve", "--id", nid]
            cmd += ["--listen", self.addr[nid], "--data-dir", str(self.work / nid), "--cluster-id", CLUSTER]
            cmd += [f"--peer={p}={a}" for p, a in self.addr.items() if p != nid] + ["--bootstrap"]
            cmd += [
                *self.tls(nid if self.bind_ids else "node"),
                "--log-format",
                "json",
                "--log-level",
                "info",
            ]
            cmd += ["--tls-bind-ids"] if self.bind_ids else []
            with open(self.work / f"{nid}.log", "wb") as log:
                self.procs[nid] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def log_lines(self, nid: str) -> list[str]:
        return (self.work / f"{nid}.log").read_text().splitlines()


@pytest.fixture
def cluster(tmp_path: pathlib.Path) -> Iterator[TLSCluster]:
    pki = tmp_path / "pki"
    pki.mkdir()
    make_ca(pki, "ca")
    make_leaf(pki, "node", "ca")  # one certificate for every node and the client: SAN 127.0.0.1
    make_ca(pki, "rogue-ca")
    make_leaf(pki, "rogue", "rogue-ca")
    c = TLSCluster(pki, tmp_path)
    c.start()
    try:
        yield c
    finally:
        c.stop()


def cli(c: TLSCluster, *argv: str, tls: list[str], timeout: float = DEADLINE) -> int:
    return main([*argv, "--endpoints", c.endpoints, "--cluster-id", CLUSTER, "--timeout", str(timeout), *tls])


def test_mutual_tls_cluster_serves_clients_with_certificates_only(
    cluster: TLSCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    c = cluster
    # The first put waits for the processes to start and elect a leader (retries are safe).
    assert cli(c, "put", "greeting", "hello", tls=c.tls()) == 0
    assert capsys.readouterr().out == "OK\n"
    assert cli(c, "get", "greeting", tls=c.tls()) == 0
    assert capsys.readouterr().out == "hello\n"
    assert cli(c, "status", tls=c.tls()) == 0
    rows = capsys.readouterr().out.splitlines()[1:]
    assert sorted(r.split()[0] for r in rows) == list(IDS)
    assert sum(r.split()[3] == "leader" for r in rows) == 1

    # A certificate from another CA, or none at all: refused, told why in one line, exit 1.
    for tls in (c.tls("rogue", ca="ca"), c.tls(None)):
        assert cli(c, "get", "greeting", tls=tls, timeout=0.5) == 1
        captured = capsys.readouterr()
        assert captured.out == "" and captured.err.count("\n") == 1, captured.err
        assert captured.err.startswith("phalanx-aio: 127.0.0.1:"), captured.err
        assert "did not accept this client's certificate" in captured.err
    # A client that does not speak TLS is told to.
    assert cli(c, "get", "greeting", tls=[], timeout=0.5) == 1
    err = capsys.readouterr().err
    assert err.startswith("phalanx-aio: 127.0.0.1:") and err.count("\n") == 1, err
    assert "speaks TLS: give --tls-ca" in err
    # A client that does not trust the nodes' CA refuses them.
    assert cli(c, "get", "greeting", tls=c.tls("rogue", ca="rogue-ca"), timeout=0.5) == 1
    err = capsys.readouterr().err
    assert err.startswith("phalanx-aio: TLS refused by 127.0.0.1:") and err.count("\n") == 1, err
    assert "CERTIFICATE_VERIFY_FAILED" in err

    c.stop()
    for nid in IDS:
        assert c.procs[nid].returncode == 0, c.log_lines(nid)[-5:]
        records = [json.loads(line) for line in c.log_lines(nid)]  # every line is one JSON object
        assert records and all(set(r) >= {"ts", "level", "logger", "node_id", "term", "msg"} for r in records)
        mine = [r for r in records if r["logger"].startswith("phalanx_aio.")]
        # Every record of the package names this process's node (serve binds it before starting).
        assert {r["node_id"] for r in mine} == {nid}, {(r["logger"], r["node_id"]) for r in mine}
        assert any(r["logger"] == "phalanx_aio.node" and r["msg"].startswith("leader is now") for r in mine)
        assert any(r["logger"] == "phalanx_aio.cli" for r in mine)


@pytest.mark.parametrize(
    ("tls", "message"),
    [
        (["--tls-cert", "c.pem"], "--tls-cert needs --tls-ca"),
        (["--tls-ca", "ca.pem", "--tls-key", "k.pem"], "--tls-key needs --tls-cert"),
        (["--tls-ca", "/nonexistent/ca.pem"], "TLS setup failed: --tls-ca /nonexistent/ca.pem: no such file"),
    ],
)
def test_client_tls_arguments_are_checked(
    tls: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["get", "k", "--endpoints", "127.0.0.1:1", *tls]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_node_ids_bound_to_certificates(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    """With --tls-bind-ids and a certificate per node naming it, the cluster forms and serves."""
    pki = tmp_path / "pki"
    pki.mkdir()
    make_ca(pki, "ca")
    for name in ("node", *IDS):  # "node" is the client's
        make_leaf(pki, name, "ca")
    c = TLSCluster(pki, tmp_path, bind_ids=True)
    c.start()
    try:
        assert cli(c, "put", "greeting", "hello", tls=c.tls()) == 0
        assert cli(c, "get", "greeting", tls=c.tls()) == 0
        assert capsys.readouterr().out == "OK\nhello\n"
    finally:
        c.stop()
    for nid in IDS:
        assert c.procs[nid].returncode == 0, c.log_lines(nid)[-5:]
        assert not any("rejected a call" in line for line in c.log_lines(nid)), nid


def test_tls_bind_ids_needs_mutual_tls(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["serve", "--id", "n1", "--listen", "127.0.0.1:1", "--data-dir", "/nonexistent"]
    assert main([*argv, "--tls-cert", "c.pem", "--tls-bind-ids"]) == 2
    err = capsys.readouterr().err
    assert "--tls-bind-ids needs mutual TLS" in err and "Traceback" not in err
