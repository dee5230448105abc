"""Leaving one machine: five members, each in its own network namespace with its own address,
bound to 0.0.0.0 and advertising that address, found through a real DNS server (dnsmasq) by
``--discover``; then one member is replaced by a new one in a new namespace.

The lab is built by the test and exists only inside namespaces: a hub namespace holds a bridge
(10.213.0.1/24) and dnsmasq; each member namespace is joined to the bridge by a veth pair whose
ends both live in namespaces (nothing is added to the machine's own network, no packet leaves
it). ``ip netns exec`` gives each member namespace its own ``/etc/resolv.conf`` (from
``/etc/netns/NAME/``), which names the hub's dnsmasq; the members resolve ``raft.phx.test``
with the C library, as in any deployment.

Needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN), ``ip`` (iproute2) and ``dnsmasq``; skips naming
what is missing. ``.ci/run`` installs dnsmasq when it can.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

SUBNET = "10.213.0"
HUB_ADDRESS = f"{SUBNET}.1"
NAME = "raft.phx.test"
PORT = 7000
DEADLINE = 60.0  # seconds for each step to converge; typically a few


def _run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=30)


def _missing() -> str | None:
    """Why the lab cannot be built here, or ``None``."""
    if sys.platform != "linux":
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "creating network namespaces needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN)"
    if shutil.which("ip") is None:
        return "the 'ip' tool (iproute2) is not installed"
    if shutil.which("dnsmasq") is None:
        return "dnsmasq is not installed (apt-get install dnsmasq; .ci/run does it when it can)"
    probe = f"phx-probe-{os.getpid()}"
    made = _run("ip", "netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"cannot create a network namespace: {made.stderr.strip()}"
    try:
        entered = _run("ip", "netns", "exec", probe, "ip", "link", "set", "lo", "up", check=False)
        if entered.returncode != 0:
            return f"cannot enter a network namespace: {entered.stderr.strip()}"
    finally:
        _run("ip", "netns", "del", probe, check=False)
    return None


class Lab:
    """The hub (bridge and DNS) and the member namespaces; everything removed by :meth:`close`."""

    def __init__(self, tmp: pathlib.Path) -> None:
        self.tmp = tmp
        self.tag = f"phx{os.getpid() % 100000}"
        self.hub = f"{self.tag}-hub"
        self.namespaces: list[str] = []
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.hosts = tmp / "dns-hosts"
        self.dns: subprocess.Popen[bytes] | None = None

    def ns(self, member: str) -> str:
        return f"{self.tag}-{member}"

    def address(self, index: int) -> str:
        return f"{SUBNET}.{10 + index}"

    def build_hub(self) -> None:
        _run("ip", "netns", "add", self.hub)
        self.namespaces.append(self.hub)
        hub = ("ip", "-n", self.hub)
        _run(*hub, "link", "set", "lo", "up")
        _run(*hub, "link", "add", "br0", "type", "bridge")
        _run(*hub, "addr", "add", f"{HUB_ADDRESS}/24", "dev", "br0")
        _run(*hub, "link", "set", "br0", "up")

    def add_member_namespace(self, member: str, index: int) -> None:
        ns = self.ns(member)
        _run("ip", "netns", "add", ns)
        self.namespaces.append(ns)
        etc = pathlib.Path("/etc/netns") / ns
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "resolv.conf").write_text(f"nameserver {HUB_ADDRESS}\noptions timeout:1 attempts:2\n")
        (etc / "hosts").write_text("127.0.0.1 localhost\n")  # nothing of the machine's own
        port = f"v{index}"
        _run(
            "ip", "link", "add", port, "netns", self.hub, "type", "veth", "peer", "name", "eth0", "netns", ns
        )
        _run("ip", "-n", self.hub, "link", "set", port, "master", "br0", "up")
        _run("ip", "-n", ns, "link", "set", "lo", "up")
        _run("ip", "-n", ns, "addr", "add", f"{self.address(index)}/24", "dev", "eth0")
        _run("ip", "-n", ns, "link", "set", "eth0", "up")

    def publish(self, addresses: list[str]) -> None:
        """Make ``NAME`` resolve to ``addresses`` (A records), now."""
        self.hosts.write_text("".join(f"{a} {NAME}\n" for a in addresses))
        if self.dns is None:
            log = (self.tmp / "dnsmasq.log").open("wb")
            self.dns = subprocess.Popen(
                [
                    "ip", "netns", "exec", self.hub, "dnsmasq", "--keep-in-foreground",
                    "--conf-file=/dev/null", "--no-resolv", "--no-hosts", f"--addn-hosts={self.hosts}",
                    "--bind-interfaces",
                    f"--listen-address={HUB_ADDRESS}", "--port=53", "--user=root", "--log-facility=-",
                    f"--pid-file={self.tmp / 'dnsmasq.pid'}", "--local-ttl=0", "--log-queries",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        else:
            self.dns.send_signal(signal.SIGHUP)  # re-read the hosts file

    def serve(self, member: str, index: int, *args: str) -> None:
        data = self.tmp / member
        cmd = [
            "ip", "netns", "exec", self.ns(member), sys.executable, "-m", "phalanx_aio.cli.main", "serve",
            "--id", member, "--listen", f"0.0.0.0:{PORT}", "--advertise", f"{self.address(index)}:{PORT}",
            "--data-dir", str(data), "--cluster-id", "netns", *args,
        ]  # fmt: skip
        log = (self.tmp / f"{member}.log").open("wb")
        self.procs[member] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=_clean_env())

    def client(self, *args: str, endpoints: list[str]) -> subprocess.CompletedProcess[str]:
        """A client command run in the hub (which reaches every member over the bridge)."""
        cmd = ["ip", "netns", "exec", self.hub, sys.executable, "-m", "phalanx_aio.cli.main"]
        cmd += ["--endpoints", ",".join(endpoints), "--cluster-id", "netns", "--timeout", "5", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=_clean_env())

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in self.tmp.glob("*.log")
        )

    def close(self) -> None:
        for proc in [*self.procs.values(), *([self.dns] if self.dns else [])]:
            if proc.poll() is None:
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        for ns in self.namespaces:
            _run("ip", "netns", "del", ns, check=False)
            shutil.rmtree(pathlib.Path("/etc/netns") / ns, ignore_errors=True)


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("PHALANX_")}


@pytest.fixture
def lab(tmp_path: pathlib.Path) -> Iterator[Lab]:
    reason = _missing()
    if reason is not None:
        pytest.skip(reason)
    built = Lab(tmp_path)
    try:
        yield built
    finally:
        built.close()


def _until(lab: Lab, what: str, check: object) -> object:
    deadline = time.monotonic() + DEADLINE
    last: object = None
    while time.monotonic() < deadline:
        last = check()  # type: ignore[operator]
        if last:
            return last
        time.sleep(0.5)
    raise AssertionError(f"{what}: not within {DEADLINE} s (last: {last!r})\n{lab.logs()}")


def _members(lab: Lab, endpoints: list[str]) -> dict[str, tuple[str, str]] | None:
    out = lab.client("-w", "json", "members", "list", endpoints=endpoints)
    if out.returncode != 0:
        return None
    return {m["id"]: (m["address"], m["kind"]) for m in json.loads(out.stdout)}


def test_five_namespaces_found_by_dns_then_one_replaced(lab: Lab) -> None:
    started = time.monotonic()
    lab.build_hub()
    members = {f"m{i}": i for i in range(1, 6)}
    for member, index in members.items():
        lab.add_member_namespace(member, index)
    lab.publish([lab.address(i) for i in members.values()])
    addr = {m: f"{lab.address(i)}:{PORT}" for m, i in members.items()}

    # Three founders name each other; the other two find the cluster through DNS alone.
    founders = ["m1", "m2", "m3"]
    for m in founders:
        peers = [a for f in founders if f != m for a in ("--peer", f"{f}={addr[f]}")]
        lab.serve(m, members[m], "--bootstrap", *peers)
    for m in ("m4", "m5"):
        lab.serve(m, members[m], "--discover", NAME)

    everyone = list(addr.values())
    want = {m: (addr[m], "voter") for m in members}
    _until(lab, "five voters", lambda: _members(lab, everyone) == want)
    assert lab.client("put", "k", "v1", endpoints=everyone).returncode == 0

    # Replace m2: it dies, is removed, and m6 (a new namespace, a new address) takes its place,
    # found through DNS, which now lists m6 instead of m2.
    lab.procs["m2"].kill()
    lab.procs["m2"].wait(timeout=10)
    survivors = [addr[m] for m in members if m != "m2"]

    def remove() -> str | None:
        out = lab.client("members", "remove", "m2", endpoints=survivors)
        return out.stdout if out.returncode == 0 else None

    assert "m2" not in str(_until(lab, "m2 removed", remove))
    lab.add_member_namespace("m6", 6)
    addr["m6"] = f"{lab.address(6)}:{PORT}"
    lab.publish([lab.address(i) for m, i in [*members.items(), ("m6", 6)] if m != "m2"])
    lab.serve("m6", 6, "--discover", NAME)

    want = {m: (addr[m], "voter") for m in ("m1", "m3", "m4", "m5", "m6")}
    _until(lab, "m6 a voter in m2's place", lambda: _members(lab, survivors) == want)
    got = _until(
        lab,
        "m6 serves the key",
        lambda: (
            (r := lab.client("get", "k", "--consistency", "stale", endpoints=[addr["m6"]])).returncode == 0
            and r.stdout
        ),
    )
    assert got == "v1\n"
    assert lab.client("put", "k", "v2", endpoints=[addr["m6"]]).returncode == 0  # via m6
    status = json.loads(lab.client("-w", "json", "status", endpoints=[addr["m6"]]).stdout)
    assert status["leader"] in want and {r["id"] for r in status["members"]} == set(want)
    queries = (lab.tmp / "dnsmasq.log").read_text(errors="replace")
    assert f"query[A] {NAME}" in queries  # the joiners asked the DNS server
    assert time.monotonic() - started < 3 * DEADLINE


def test_the_skip_names_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    real_which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name: None if name == "dnsmasq" else real_which(name))
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(sys, "platform", "linux")
    reason = _missing()
    assert reason is not None and ("dnsmasq" in reason or "'ip'" in reason)
