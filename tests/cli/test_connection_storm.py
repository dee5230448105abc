"""A connection storm against the leader of a LAN-preset cluster of ``serve`` processes does not
cost it its leadership (issue 23). Before the connection limits, 3,000 gRPC calls on new
connections in 0.3 s stalled the leader's loop for seconds and the cluster elected another.

The storm comes from 127.0.0.2, so that the members (at 127.0.0.1) do not count it as a peer's.
Slow: starting the processes and the storm take about 15 s on two cores.
"""

from __future__ import annotations

import asyncio
import pathlib
import resource

import pytest
from grpclib.client import Channel
from grpclib.const import Cardinality
from grpclib.protocol import H2Protocol

from phalanx_aio._grpc import WireBytes
from phalanx_aio.cli.demo import LocalCluster
from phalanx_aio.kv import KVClient
from phalanx_aio.kv import messages as m
from phalanx_aio.kv.codec import encode_kv_message

pytestmark = pytest.mark.slow

STORM = 3000
SPREAD = 0.3
"""Seconds over which the storm's calls start."""


class _FromStranger(Channel):
    """A channel whose connection comes from 127.0.0.2."""

    async def _create_connection(self) -> H2Protocol:
        _, protocol = await asyncio.get_running_loop().create_connection(
            self._protocol_factory, self._host, self._port, local_addr=("127.0.0.2", 0)
        )
        return protocol


async def _status_call(address: str, delay: float) -> bool:
    await asyncio.sleep(delay)
    host, port = address.rsplit(":", 1)
    channel = _FromStranger(host, int(port))
    path = next(p for p, (req, _) in m.KV_METHODS.items() if req is m.StatusRequest)
    request = encode_kv_message(m.StatusRequest(m.RequestHeader("phalanx", "", 0, 0)))
    try:
        async with asyncio.timeout(15):
            async with channel.request(path, Cardinality.UNARY_UNARY, WireBytes, WireBytes) as call:
                await call.send_message(WireBytes(request), end=True)
                return await call.recv_message() is not None
    except Exception:  # refused, closed unread, timed out: the storm is shed
        return False
    finally:
        channel.close()


async def test_a_connection_storm_does_not_move_the_leader(tmp_path: pathlib.Path) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < STORM + 500:
        pytest.skip(f"needs {STORM + 500} file descriptors, the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, STORM + 1000)), hard))
    cluster = LocalCluster(3, tmp_path)
    cluster.start_all()
    try:
        async with KVClient(list(cluster.addr.values()), timeout=30.0) as kv:
            await kv.put(b"k", b"v")  # waits for the processes and a leader
            before = await kv.status()
            leader = before.leader_id
            served = await asyncio.gather(
                *(_status_call(cluster.addr[leader], SPREAD * i / STORM) for i in range(STORM))
            )
            after = await kv.status()
            assert (after.leader_id, after.term) == (leader, before.term), (
                f"the storm moved the leader: {before.leader_id}@{before.term} -> "
                f"{after.leader_id}@{after.term} ({sum(served)} storm calls served)"
            )
            await kv.put(b"k", b"w")
            assert await kv.get(b"k") == b"w"
    finally:
        cluster.stop_all()
