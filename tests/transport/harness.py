"""gRPC transports for tests: a recording handler, a node factory fixture, and message builders."""

from __future__ import annotations

import asyncio
import random
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import pytest
from grpclib.client import Channel
from grpclib.const import Cardinality

from phalanx_aio._grpc import WireBytes
from phalanx_aio.core.types import ConfState, Entry, EntryType, Message, MessageType, Snapshot, SnapshotMeta
from phalanx_aio.transport.grpc import GrpcTransport

DEADLINE = 10.0
CLUSTER = "c1"
FAST = {"backoff_initial": 0.01, "backoff_max": 0.1}


class Recorder:
    """A TransportHandler that records every callback and lets tests wait for conditions."""

    def __init__(self) -> None:
        self.received: list[tuple[str, Message]] = []
        self.unreachable: list[str] = []
        self.snapshot_status: list[tuple[str, bool]] = []
        self.removed: list[tuple[str, int]] = []
        self._changed = asyncio.Event()

    def on_messages(self, sender: str, messages: Sequence[Message]) -> None:
        self.received.extend((sender, m) for m in messages)
        self._changed.set()

    def on_unreachable(self, peer: str) -> None:
        self.unreachable.append(peer)
        self._changed.set()

    def on_snapshot_status(self, peer: str, ok: bool) -> None:
        self.snapshot_status.append((peer, ok))
        self._changed.set()

    def on_removed(self, peer: str, index: int) -> None:
        self.removed.append((peer, index))
        self._changed.set()

    def from_(self, sender: str) -> list[Message]:
        return [m for s, m in self.received if s == sender]

    async def wait(self, predicate: Callable[[], bool]) -> None:
        async def loop() -> None:
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(loop(), DEADLINE)


async def eventually(predicate: Callable[[], bool]) -> None:
    """Poll a condition nothing signals (server-side counters) under a generous deadline."""

    async def loop() -> None:
        while not predicate():
            await asyncio.sleep(0.005)

    await asyncio.wait_for(loop(), DEADLINE)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


Factory = Callable[..., Awaitable[tuple[GrpcTransport, Recorder]]]


@pytest.fixture
async def node() -> AsyncIterator[Factory]:
    """Start GrpcTransports on loopback; all are closed at the end of the test."""
    made: list[GrpcTransport] = []

    async def make(node_id: str, *, start: bool = True, **kwargs: Any) -> tuple[GrpcTransport, Recorder]:
        kwargs.setdefault("cluster_id", CLUSTER)
        kwargs.setdefault("listen", "127.0.0.1:0")
        kwargs.setdefault("rng", random.Random(7))
        for key, value in FAST.items():
            kwargs.setdefault(key, value)
        t = GrpcTransport(node_id=node_id, **kwargs)
        made.append(t)
        rec = Recorder()
        if start:
            await t.start(rec)
        return t, rec

    yield make
    for t in made:
        await t.aclose()


def connect(*transports: GrpcTransport) -> None:
    """Make every transport a peer of every other."""
    for t in transports:
        t.set_peers({o.node_id: o.address for o in transports if o is not t})


def app(frm: str, to: str, index: int, n_entries: int = 3, size: int = 16) -> Message:
    entries = tuple(
        Entry(2, index + i, EntryType.NORMAL, bytes([i % 256]) * size) for i in range(1, n_entries + 1)
    )
    return Message(MessageType.APP, to, frm, 2, log_term=2, index=index, entries=entries, commit=index)


def heartbeat(frm: str, to: str, seq: int) -> Message:
    return Message(MessageType.HEARTBEAT, to, frm, 2, commit=seq, seq=seq)


def snap(frm: str, to: str, data: bytes) -> Message:
    conf = ConfState(voters=frozenset({"n1", "n2"}), contexts=(("n1", b"127.0.0.1:1"),))
    return Message(MessageType.SNAP, to, frm, 3, snapshot=Snapshot(SnapshotMeta(500, 3, conf), data))


async def raw_call(address: str, method: str, payloads: Sequence[bytes]) -> bytes:
    """One client-streaming call with hand-made payloads; returns the reply's bytes."""
    host, port = address.rsplit(":", 1)
    channel = Channel(host, int(port))
    try:
        async with channel.request(method, Cardinality.STREAM_UNARY, WireBytes, WireBytes) as call:
            for p in payloads:
                await call.send_message(WireBytes(p))
            await call.end()
            reply = await call.recv_message()
        assert reply is not None
        return reply.data
    finally:
        channel.close()


def own_tasks() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()]


# ---------------------------------------------------------------------------------------------
# Delivery
