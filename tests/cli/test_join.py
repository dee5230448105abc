"""``serve --join``: a new node joins a running cluster through one member, idempotently."""

from __future__ import annotations

import asyncio
import contextlib
import pathlib

from phalanx_aio._net import free_loopback_ports
from phalanx_aio.cli.main import build_parser
from phalanx_aio.cli.serve import resolve_settings, serve
from phalanx_aio.kv.client import KVClient

DEADLINE = 30.0


async def _start(argv: list[str]) -> tuple[asyncio.Task[None], asyncio.Event]:
    settings = resolve_settings(build_parser().parse_args(["serve", *argv]), {})
    ready = asyncio.Event()
    task = asyncio.create_task(serve(settings, ready=ready))
    await asyncio.wait_for(ready.wait(), DEADLINE)
    return task, ready


async def _stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_join_adds_a_learner_then_promotes_it_and_survives_restart(tmp_path: pathlib.Path) -> None:
    ids = ["n1", "n2", "n3", "n4"]
    addr = {nid: f"127.0.0.1:{p}" for nid, p in zip(ids, free_loopback_ports(4), strict=True)}
    founders = ids[:3]
    tasks = {}
    for nid in founders:
        peers = [f"--peer={p}={addr[p]}" for p in founders if p != nid]
        tasks[nid], _ = await _start(
            ["--id", nid, "--listen", addr[nid], "--data-dir", str(tmp_path / nid), *peers]
        )
    try:
        async with KVClient([addr[n] for n in founders], timeout=DEADLINE) as kv:
            for i in range(30):
                await kv.put(b"k%d" % i, b"v")
            join_args = ["--id", "n4", "--listen", addr["n4"], "--data-dir", str(tmp_path / "n4")]
            tasks["n4"], _ = await _start([*join_args, "--join", addr["n1"]])

            async def promoted() -> bool:
                return any(m.node_id == "n4" and not m.learner for m in await kv.members())

            for _ in range(int(DEADLINE / 0.2)):
                if await promoted():
                    break
                await asyncio.sleep(0.2)
            assert await promoted(), "n4 was not added and promoted"
            # Restarting the joiner with the same flags is harmless (idempotent).
            await _stop(tasks.pop("n4"))
            tasks["n4"], _ = await _start([*join_args, "--join", addr["n1"]])
            members = await kv.members()
            assert sorted(m.node_id for m in members) == ids
            await kv.put(b"after", b"restart")
            async with KVClient([addr["n4"]], timeout=DEADLINE) as kv4:
                # The restarted joiner catches up again from its own log and the leader.
                applied = 0
                for _ in range(int(DEADLINE / 0.2)):
                    applied = (await kv4.status(addr["n4"])).applied_index
                    if applied > 30:
                        break
                    await asyncio.sleep(0.2)
                assert applied > 30
    finally:
        for t in tasks.values():
            await _stop(t)
