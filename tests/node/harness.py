"""An in-memory cluster of RaftNodes for tests (:class:`Harness`) and a counting state machine."""

from __future__ import annotations

import struct
from collections.abc import Callable

from phalanx_aio.core import Config
from phalanx_aio.node import RaftNode, StateMachine
from phalanx_aio.storage import MemoryStorage
from phalanx_aio.transport.memory import MemoryNetwork
from tests.helpers import find_leader, poll_until

# Fast, still generous timing: 10 ms ticks, elections after 100-200 ms.


FAST = Config.lan(tick_interval=0.01)
DEADLINE = 10.0  # generous per-operation deadline on a shared machine


class Counter(StateMachine):
    """Commands are b"incr N"; the state is the running total and the number applied."""

    def __init__(self) -> None:
        self.value = 0
        self.applied = 0

    def apply(self, command: bytes) -> int:
        verb, _, arg = command.partition(b" ")
        if verb != b"incr":
            raise ValueError(f"unknown command {command!r}")
        self.value += int(arg)
        self.applied += 1
        return self.value

    def snapshot(self) -> bytes:
        return struct.pack(">qq", self.value, self.applied)

    def restore(self, data: bytes) -> None:
        self.value, self.applied = struct.unpack(">qq", data)


class Harness:
    def __init__(self, ids: list[str], **node_kw: object) -> None:
        self.ids = ids
        self.net = MemoryNetwork()
        self.stores = {nid: MemoryStorage(nid) for nid in ids}
        self.sms: dict[str, Counter] = {}
        self.nodes: dict[str, RaftNode] = {}
        self.node_kw = node_kw

    def make(self, nid: str, **kw: object) -> RaftNode:
        self.sms[nid] = Counter()
        args: dict[str, object] = {
            "address": f"mem://{nid}",
            "peers": {p: f"mem://{p}" for p in self.ids if p != nid},
            "state_machine": self.sms[nid],
            "storage": self.stores.setdefault(nid, MemoryStorage(nid)),
            "config": FAST,
            "transport": self.net.transport(nid),
            "seed": hash(nid) & 0xFFFF,
            **self.node_kw,
            **kw,
        }
        node = RaftNode(nid, **args)  # type: ignore[arg-type]
        self.nodes[nid] = node
        return node

    async def start(self, nid: str, **kw: object) -> RaftNode:
        node = self.make(nid, **kw)
        await node.start()
        return node

    async def stop(self, nid: str) -> None:
        await self.nodes.pop(nid).aclose()

    async def kill(self, nid: str) -> None:
        """Stop ``nid`` as a crash would, without handing leadership over."""
        await self.nodes.pop(nid).aclose(hand_over=False)

    async def leader(self) -> RaftNode:
        return await find_leader(self.nodes.values, DEADLINE)

    async def until(self, pred: Callable[[], bool]) -> None:
        await poll_until(pred, DEADLINE)

    async def aclose(self) -> None:
        for nid in list(self.nodes):
            await self.stop(nid)
