"""examples/web_service.py: three processes on loopback, driven over HTTP by aiohttp.

Writes through any member, linearizable reads, the leader-only job on exactly the leader, a
leader stopped gracefully (SIGTERM), then, after it restarts, a leader killed (SIGKILL): writes
go on throughout. No timing is asserted: every wait is a poll against a generous deadline.
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from phalanx_aio._net import free_loopback_ports

aiohttp = pytest.importorskip("aiohttp")

EXAMPLE = pathlib.Path(__file__).resolve().parents[1] / "examples" / "web_service.py"
IDS = ["n1", "n2", "n3"]
DEADLINE = 30.0  # for each wait; the LAN preset elects in about a second


class Cluster:
    def __init__(self, tmp: pathlib.Path) -> None:
        ports = free_loopback_ports(6)
        self.http = {nid: f"127.0.0.1:{ports[i]}" for i, nid in enumerate(IDS)}
        self.raft = {nid: f"127.0.0.1:{ports[3 + i]}" for i, nid in enumerate(IDS)}
        self.tmp = tmp
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, nid: str) -> None:
        peers = [f"--peer={p}={a}" for p, a in self.raft.items() if p != nid]
        argv = [sys.executable, str(EXAMPLE), "--id", nid, "--http", self.http[nid]]
        argv += ["--raft", self.raft[nid], *peers, "--data", str(self.tmp / "data")]
        log = open(self.tmp / f"{nid}.log", "ab")  # noqa: SIM115 (the process owns it)
        self.procs[nid] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=os.environ)
        log.close()

    def alive(self) -> list[str]:
        return [nid for nid, p in self.procs.items() if p.poll() is None]

    def kill_all(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()

    def logs(self) -> str:
        files = [self.tmp / f"{nid}.log" for nid in IDS]
        return "\n".join(f.read_text() for f in files if f.exists())


async def until(check: Callable[[], Awaitable[Any]], what: str) -> Any:
    """Poll ``check`` until it returns something truthy (errors count as not yet)."""
    deadline = time.monotonic() + DEADLINE
    last: object = None
    while time.monotonic() < deadline:
        try:
            result = await check()
        except (TimeoutError, aiohttp.ClientError, KeyError, TypeError) as exc:
            result, last = None, exc
        if result:
            return result
        await asyncio.sleep(0.05)
    raise AssertionError(f"not within {DEADLINE} s: {what} (last: {last!r})")


async def test_web_service_writes_survive_a_graceful_stop_and_a_kill(tmp_path: pathlib.Path) -> None:
    cluster = Cluster(tmp_path)
    timeout = aiohttp.ClientTimeout(total=15)
    acked = 0  # writes of 1 apple that returned a count
    unknown = 0  # writes whose outcome is unknown (504): each may have happened once
    try:
        for nid in IDS:
            cluster.start(nid)
        async with aiohttp.ClientSession(timeout=timeout) as http:

            async def get(nid: str, path: str) -> Any:
                async with http.get(f"http://{cluster.http[nid]}{path}") as resp:
                    return await resp.json() if resp.status == 200 else None

            async def add(nid: str) -> int:
                """Add one apple through ``nid``, retrying while it is certainly not applied."""
                nonlocal acked, unknown

                async def once() -> int | None:
                    nonlocal unknown
                    async with http.post(f"http://{cluster.http[nid]}/items/apple?n=1") as resp:
                        if resp.status == 504:
                            unknown += 1
                        if resp.status != 200:
                            return None  # 503 (not applied) or 504: try again
                        count: int = (await resp.json())["count"]
                        return count

                count: int = await until(once, f"a write through {nid}")
                acked += 1
                return count

            async def agreed_leader(members: list[str]) -> str:
                async def check() -> str | None:
                    views = [await get(nid, "/health") for nid in members]
                    leaders = {v["leader"] if v else None for v in views}
                    if len(leaders) != 1 or None in leaders:
                        return None
                    (leader,) = leaders
                    return leader if leader in members else None

                leader: str = await until(check, f"{members} agree on a leader")
                return leader

            async def job_only_on(leader: str, members: list[str]) -> None:
                async def check() -> bool:
                    running = [nid for nid in members if (await get(nid, "/health"))["job_running"]]
                    beat = (await get(members[0], "/leader"))["heartbeat"]
                    return running == [leader] and beat["node"] == leader and beat["beats"] >= 2

                await until(check, f"the heartbeat job runs on {leader} alone")

            async def count_on(nid: str) -> int:
                count: int = (await until(lambda: get(nid, "/items/apple"), f"a read on {nid}"))["count"]
                return count

            first = await agreed_leader(IDS)
            # Writes through every member (followers forward), reads through every member.
            counts = [await add(nid) for nid in IDS]
            assert counts == sorted(counts) and counts[-1] >= 3
            for nid in IDS:  # linearizable: each sees all three acknowledged writes
                assert acked <= await count_on(nid) <= acked + unknown
            await job_only_on(first, IDS)

            # The leader stops gracefully: it hands leadership over and exits 0.
            cluster.procs[first].send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(cluster.procs[first].wait, DEADLINE) == 0
            rest = [nid for nid in IDS if nid != first]
            for nid in rest:
                await add(nid)
            second = await agreed_leader(rest)
            assert second != first
            await job_only_on(second, rest)

            # It comes back from its SQLite file and catches up.
            cluster.start(first)
            second = await agreed_leader(IDS)  # most likely still the same one
            await until(lambda: _at_least(count_on(first), acked), f"{first} catches up")

            # The leader is killed: the other two elect a new one and take writes.
            cluster.procs[second].kill()
            await asyncio.to_thread(cluster.procs[second].wait, DEADLINE)
            rest = [nid for nid in IDS if nid != second]
            for nid in rest:
                await add(nid)
            third = await agreed_leader(rest)
            assert third != second
            await job_only_on(third, rest)
            totals = [await count_on(nid) for nid in rest]
            assert totals[0] == totals[1] and acked <= totals[0] <= acked + unknown
            assert acked == 7
    except BaseException:
        print(cluster.logs())
        raise
    finally:
        cluster.kill_all()


async def _at_least(value: Awaitable[int], floor: int) -> bool:
    return await value >= floor
