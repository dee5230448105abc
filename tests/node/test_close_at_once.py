"""Issue 17, part 0: leaving ``async with RaftNode`` always returns.

Three nodes on loopback gRPC that start and close at once (what the README's pattern does when
the first call fails) used to hang in about one run in fifteen: a peer sender's cancellation,
arriving in the same turn as the loss of the connection it was opening, was swallowed by grpclib
(see ``GrpcTransport._run_sender``), and ``aclose()`` waited for that sender for ever.
"""

from __future__ import annotations

import asyncio
import logging
import pathlib
import random

import pytest

from phalanx_aio import Config, RaftNode, SQLiteStorage
from phalanx_aio._net import free_loopback_ports
from tests.node.harness import Counter

CFG = Config.lan(tick_interval=0.02)
RUNS = 100
RUN_DEADLINE = 5.0  # one run takes tens of milliseconds; a hang fails the test, never CI


async def _start_and_close_at_once(tmp: pathlib.Path, run: int, rng: random.Random) -> None:
    ids = ["n1", "n2", "n3"]
    addr = {nid: f"127.0.0.1:{port}" for nid, port in zip(ids, free_loopback_ports(3), strict=True)}

    async def one(nid: str) -> None:
        async with RaftNode(
            nid,
            address=addr[nid],
            peers={p: a for p, a in addr.items() if p != nid},
            state_machine=Counter(),
            storage=SQLiteStorage(tmp / f"{run}-{nid}.db"),
            config=CFG,
        ):
            # Spread the closes over the milliseconds in which the peer streams are opened.
            await asyncio.sleep(rng.random() * 0.002)

    await asyncio.gather(*(one(nid) for nid in ids))


async def test_three_nodes_started_and_closed_at_once_always_close(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="phalanx_aio.transport.grpc")
    rng = random.Random(17)
    for run in range(RUNS):
        try:
            async with asyncio.timeout(RUN_DEADLINE):
                await _start_and_close_at_once(tmp_path, run, rng)
        except TimeoutError:
            pytest.fail(f"run {run}: leaving `async with RaftNode` did not return within {RUN_DEADLINE} s")
    # The fix, not the safety net: no transport task needed a second cancellation.
    assert not [r.getMessage() for r in caplog.records if "did not stop when cancelled" in r.getMessage()]
