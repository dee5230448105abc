"""A cluster of real ``phalanx-aio serve`` processes on loopback, with a proxy on every link.

:class:`ChaosCluster` starts ``n`` members as separate processes (SQLite data directories under a
work directory, the LAN timing preset by default) and one :class:`~phalanx_aio.chaos.proxy.LinkProxy`
per directed link ``i -> j``. Each process routes its connections to member ``j`` through its own
proxy for ``i -> j`` (see :mod:`phalanx_aio.chaos._serve_shim`), so the harness can cut, blackhole
or delay any directed link. Clients connect to the members' real addresses directly.

Process faults act on the processes: :meth:`ChaosCluster.kill` (SIGKILL), :meth:`~ChaosCluster.pause`
and :meth:`~ChaosCluster.resume` (SIGSTOP / SIGCONT), :meth:`~ChaosCluster.wipe` (delete the data
directory) and :meth:`~ChaosCluster.start_node` (start again, from its data or, with ``join``,
through ``serve --join``).

Every process is killed by :meth:`ChaosCluster.aclose` (use ``async with``); each also dies with the
harness process (``PR_SET_PDEATHSIG`` on Linux), so nothing is left behind even if the harness
crashes.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from enum import StrEnum
from types import TracebackType
from typing import IO

from phalanx_aio._net import free_loopback_ports
from phalanx_aio.chaos._serve_shim import PARENT_ENV, ROUTES_ENV
from phalanx_aio.chaos.proxy import LinkMode, LinkProxy
from phalanx_aio.errors import PhalanxError
from phalanx_aio.kv.client import KVClient
from phalanx_aio.kv.messages import StatusResponse

__all__ = ["ChaosCluster", "NodeState"]

log = logging.getLogger("phalanx_aio.chaos")


class NodeState(StrEnum):
    """What the harness last did to a member's process."""

    RUNNING = "running"
    PAUSED = "paused"
    """SIGSTOPped."""
    DOWN = "down"
    """Killed (or never started)."""


class ChaosCluster:
    """``n`` members ``n1`` ... ``nN`` of one cluster, run as ``phalanx-aio serve`` processes.

    * ``workdir``: where data directories (``<id>/``) and logs (``<id>.log``) go; created if needed.
    * ``preset``: the ``serve --preset`` (``"lan"`` or ``"global-mesh"``).
    * ``cluster_id``: the ``--cluster-id``.
    * ``status_timeout``: the deadline of one status query to one member, in seconds.

    Start with ``async with`` (or :meth:`start`), which starts the proxies and every member;
    :meth:`aclose` kills every process and closes the proxies.
    """

    def __init__(
        self,
        n: int,
        workdir: str | os.PathLike[str],
        *,
        preset: str = "lan",
        cluster_id: str = "chaos",
        status_timeout: float = 1.0,
    ) -> None:
        if not 1 <= n <= 9:
            raise ValueError(f"a chaos cluster has 1 to 9 members, not {n}")
        if preset not in ("lan", "global-mesh"):
            raise ValueError(f"preset must be 'lan' or 'global-mesh', not {preset!r}")
        if not status_timeout > 0:
            raise ValueError(f"status_timeout must be positive, not {status_timeout!r}")
        self.ids: tuple[str, ...] = tuple(f"n{i + 1}" for i in range(n))
        """The members' ids, ``n1`` ... ``nN``."""
        self.workdir = pathlib.Path(workdir)
        """Data directories and logs live here."""
        self.preset = preset
        self.cluster_id = cluster_id
        self.status_timeout = status_timeout
        links = list(itertools.permutations(self.ids, 2))
        ports = free_loopback_ports(n + len(links))
        self.addresses: dict[str, str] = {
            nid: f"127.0.0.1:{p}" for nid, p in zip(self.ids, ports, strict=False)
        }
        """Each member's real address (what clients use, and what the configuration holds)."""
        self.links: dict[tuple[str, str], LinkProxy] = {
            (a, b): LinkProxy(a, b, ("127.0.0.1", int(self.addresses[b].rpartition(":")[2])), port)
            for (a, b), port in zip(links, ports[n:], strict=True)
        }
        """The proxy of every directed link ``(src, dst)``."""
        self.state: dict[str, NodeState] = dict.fromkeys(self.ids, NodeState.DOWN)
        """What the harness last did to each member's process."""
        self.restarts: dict[str, int] = dict.fromkeys(self.ids, 0)
        """How often each member was started again."""
        self.exits: list[tuple[float, str, int]] = []
        """Every exit found by :meth:`reap`: (``time.monotonic()``, id, exit status)."""
        self._started_once: set[str] = set()
        self._join_via: dict[str, str | None] = {}
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._logs: dict[str, IO[bytes]] = {}
        self._admin: KVClient | None = None
        self._started = False
        self._closed = False

    # ----------------------------------------------------------------- lifecycle

    async def __aenter__(self) -> ChaosCluster:
        """Start the cluster (see :meth:`start`)."""
        try:
            await self.start()
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Kill everything (see :meth:`aclose`)."""
        await self.aclose()

    async def start(self, *, leader_timeout: float = 60.0) -> str:
        """Start the proxies and every member, and wait until they agree on a leader; return it."""
        if self._started:
            raise RuntimeError("the cluster is already started")
        self._started = True
        self.workdir.mkdir(parents=True, exist_ok=True)
        for proxy in self.links.values():
            await proxy.start()
        for nid in self.ids:
            self.start_node(nid)
        leader = await self.wait_for_leader(leader_timeout)
        if leader is None:
            raise TimeoutError(f"no leader within {leader_timeout} s; logs in {self.workdir}")
        return leader

    async def aclose(self) -> None:
        """SIGKILL every process, close the proxies and the admin client. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self.kill_all()
        for f in self._logs.values():
            f.close()
        self._logs.clear()
        if self._admin is not None:
            await self._admin.aclose()
        for proxy in self.links.values():
            await proxy.aclose()

    def kill_all(self) -> None:
        """SIGKILL every member process still alive (paused ones too) and reap it."""
        for nid in list(self._procs):
            self.kill(nid)

    # ----------------------------------------------------------------- processes

    def data_dir(self, nid: str) -> pathlib.Path:
        """The data directory of member ``nid``."""
        self._check_id(nid)
        return self.workdir / nid

    def pid(self, nid: str) -> int | None:
        """The process id of member ``nid`` if it is alive."""
        proc = self._procs.get(nid)
        return proc.pid if proc is not None and proc.poll() is None else None

    def routes(self, nid: str) -> str:
        """The ``PHALANX_CHAOS_ROUTES`` of member ``nid``: every other member through its proxy."""
        return ",".join(
            f"{self.addresses[dst]}={self.links[(nid, dst)].address}" for dst in self.ids if dst != nid
        )

    def command(
        self,
        nid: str,
        *,
        join: str | None = None,
        peers: Iterable[str] | None = None,
        bootstrap: bool = False,
    ) -> list[str]:
        """The command line of member ``nid``: founding ``peers`` (default: every other member)
        or, with ``join``, ``--join`` through that member instead. ``--bootstrap`` on a founder's
        first start, or with ``bootstrap`` (an operator's mistake, for the nemesis)."""
        self._check_id(nid)
        cmd = [sys.executable, "-m", "phalanx_aio.chaos._serve_shim", "serve", "--id", nid]
        cmd += ["--listen", self.addresses[nid], "--data-dir", str(self.data_dir(nid))]
        cmd += ["--preset", self.preset, "--cluster-id", self.cluster_id]
        if join is not None:
            self._check_id(join)
            return [*cmd, "--join", self.addresses[join]]
        for p in self.ids if peers is None else peers:
            self._check_id(p)
            if p != nid:
                cmd += ["--peer", f"{p}={self.addresses[p]}"]
        if nid not in self._started_once or bootstrap:
            cmd.append("--bootstrap")  # a founder's first start; later starts must not found again
        return cmd

    def start_node(self, nid: str, *, join: str | None = None, bootstrap: bool = False) -> None:
        """Start member ``nid`` (it must be down): from its data directory with the founding
        peers (with ``bootstrap``: and ``--bootstrap``, even if it ran before), or, with
        ``join`` (another member's id), through ``serve --join``."""
        if self._closed:
            raise RuntimeError("the cluster is closed")
        if self.pid(nid) is not None:
            raise RuntimeError(f"{nid} is already running")
        env = dict(os.environ)
        env[ROUTES_ENV] = self.routes(nid)
        env[PARENT_ENV] = str(os.getpid())
        env.setdefault("PYTHONUNBUFFERED", "1")
        logf = self._logs.get(nid)
        if logf is None:
            logf = self._logs[nid] = open(self.workdir / f"{nid}.log", "ab")  # noqa: SIM115 (closed in aclose)
        logf.write(f"==== {time.strftime('%H:%M:%S')} start {nid} join={join}\n".encode())
        logf.flush()
        self._procs[nid] = subprocess.Popen(
            self.command(nid, join=join, bootstrap=bootstrap),
            stdout=logf,
            stderr=subprocess.STDOUT,
            env=env,
            stdin=subprocess.DEVNULL,
        )
        self._join_via[nid] = join
        if nid in self._started_once:
            self.restarts[nid] += 1
        self._started_once.add(nid)
        self.state[nid] = NodeState.RUNNING

    def reap(self) -> list[tuple[str, int]]:
        """Find member processes that exited by themselves (not killed by the harness): mark
        them down and return ``(id, exit status)`` for each."""
        gone = []
        for nid, proc in list(self._procs.items()):
            code = proc.poll()
            if code is not None:
                del self._procs[nid]
                self.state[nid] = NodeState.DOWN
                gone.append((nid, code))
                self.exits.append((time.monotonic(), nid, code))
        return gone

    async def wait_exit(self, nid: str, *, timeout: float) -> int | None:
        """Wait (up to ``timeout``) for member ``nid``'s process to exit by itself and return its
        status; ``None`` if it was still running, in which case it is killed."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for gone, code in self.reap():
                if gone == nid:
                    return code
            await asyncio.sleep(0.1)
        self.kill(nid)
        return None

    def restart(self, nid: str) -> None:
        """Start member ``nid`` again the way it was last started (founding peers or ``--join``)."""
        via = self._join_via.get(nid)
        if via is not None and self.state[via] is not NodeState.RUNNING:
            via = next((m for m in self.ids if m != nid and self.state[m] is NodeState.RUNNING), via)
        self.start_node(nid, join=via)

    def kill(self, nid: str) -> None:
        """SIGKILL member ``nid`` (if alive) and reap it."""
        self._check_id(nid)
        proc = self._procs.pop(nid, None)
        if proc is not None and proc.poll() is not None:
            self.exits.append((time.monotonic(), nid, proc.returncode))  # it had exited by itself
        elif proc is not None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
        self.state[nid] = NodeState.DOWN

    def pause(self, nid: str) -> None:
        """SIGSTOP member ``nid`` (it must be running)."""
        pid = self.pid(nid)
        if pid is None:
            raise RuntimeError(f"{nid} is not running")
        os.kill(pid, signal.SIGSTOP)
        self.state[nid] = NodeState.PAUSED

    def resume(self, nid: str) -> None:
        """SIGCONT member ``nid`` (a no-op unless it is paused)."""
        pid = self.pid(nid)
        if pid is not None and self.state[nid] is NodeState.PAUSED:
            os.kill(pid, signal.SIGCONT)
            self.state[nid] = NodeState.RUNNING

    def wipe(self, nid: str) -> None:
        """Delete member ``nid``'s data directory (it must be down)."""
        if self.pid(nid) is not None:
            raise RuntimeError(f"stop {nid} before wiping its data")
        shutil.rmtree(self.data_dir(nid), ignore_errors=True)

    # ----------------------------------------------------------------- the network

    def set_link(self, src: str, dst: str, mode: LinkMode, *, delay: float | None = None) -> None:
        """Set the directed link ``src -> dst`` to ``mode`` (and ``delay`` if given)."""
        proxy = self.links[(src, dst)]
        if delay is not None:
            proxy.set_delay(delay)
        proxy.set_mode(mode)

    def partition(self, *groups: Iterable[str], mode: LinkMode = LinkMode.BLACKHOLE) -> None:
        """Cut every link (both ways) between members of different ``groups``; a member in no
        group is cut from everyone. Links inside a group are left as they are."""
        where: dict[str, int] = {}
        for g, group in enumerate(groups):
            for nid in group:
                self._check_id(nid)
                if nid in where:
                    raise ValueError(f"{nid} is in two groups")
                where[nid] = g
        for (a, b), proxy in self.links.items():
            if where.get(a, -1 - self.ids.index(a)) != where.get(b, -1 - self.ids.index(b)):
                proxy.set_mode(mode)

    def bridge(self, left: Sequence[str], bridge: str, right: Sequence[str]) -> None:
        """Cut ``left`` from ``right`` (both ways) while ``bridge`` still talks to both."""
        self._check_id(bridge)
        if bridge in left or bridge in right:
            raise ValueError(f"the bridge {bridge} must be in neither half")
        for a in left:
            for b in right:
                self.links[(a, b)].set_mode(LinkMode.BLACKHOLE)
                self.links[(b, a)].set_mode(LinkMode.BLACKHOLE)

    def delay_all(self, seconds: float, links: Iterable[tuple[str, str]] | None = None) -> None:
        """Delay the given links (default: all) by ``seconds``."""
        for key in self.links if links is None else links:
            self.links[key].set_delay(seconds)

    def heal_network(self) -> None:
        """Every link back to ``pass`` without delay."""
        for proxy in self.links.values():
            proxy.heal()

    def faulty_links(self) -> list[tuple[str, str]]:
        """The links not in ``pass`` mode or delayed."""
        return [k for k, p in self.links.items() if p.mode is not LinkMode.PASS or p.delay > 0]

    # ----------------------------------------------------------------- queries

    @property
    def endpoints(self) -> list[str]:
        """Every member's real address (for clients)."""
        return [self.addresses[n] for n in self.ids]

    def admin(self) -> KVClient:
        """A shared client for status queries and admin calls (closed by :meth:`aclose`)."""
        if self._admin is None:
            self._admin = KVClient(self.endpoints, cluster_id=self.cluster_id, timeout=self.status_timeout)
        return self._admin

    async def status(self, nid: str) -> StatusResponse | None:
        """Member ``nid``'s own view (``None`` if it does not answer in ``status_timeout``)."""
        try:
            return await asyncio.wait_for(self.admin().status(self.addresses[nid]), self.status_timeout + 0.5)
        except (PhalanxError, OSError, TimeoutError):
            return None

    async def statuses(self, ids: Iterable[str] | None = None) -> dict[str, StatusResponse | None]:
        """Every member's (or the given members') view, asked concurrently."""
        which = list(self.ids if ids is None else ids)
        answers = await asyncio.gather(*(self.status(n) for n in which))
        return dict(zip(which, answers, strict=True))

    async def leader(self) -> tuple[str, int] | None:
        """The member that says it leads in the highest term, and that term (``None``: none)."""
        best: tuple[str, int] | None = None
        for nid, st in (await self.statuses()).items():
            if st is not None and st.role == "leader" and (best is None or st.term > best[1]):
                best = (nid, st.term)
        return best

    async def wait_for_leader(self, timeout: float) -> str | None:
        """Poll until some member leads; return it (``None`` after ``timeout`` seconds)."""
        deadline = time.monotonic() + timeout
        while True:
            found = await self.leader()
            if found is not None:
                return found[0]
            if time.monotonic() >= deadline:
                return None
            await asyncio.sleep(0.2)

    def _check_id(self, nid: str) -> None:
        if nid not in self.state:
            raise ValueError(f"no member {nid!r} (members: {', '.join(self.ids)})")
