"""A three-node replicated KV cluster in one script, and its client's three outcomes.

Each node is a RaftNode with the built-in KVStateMachine and SQLite storage (in a temporary
directory); its KVService shares the node's gRPC port on 127.0.0.1. The script

1. tours KVClient: put, get, compare-and-set and delete;
2. shows the calls that certainly did not happen (``NotApplied``: a refused request, a cluster
   nobody answers for);
3. has three concurrent clients increment one counter with get + compare-and-set while the
   leader is shut down part-way, then checks that every acknowledged increment happened exactly
   once.

Every KVClient call ends in one of three ways (docs/kv.md):

* it returns a value: the operation took effect exactly once;
* it raises ``NotApplied`` (or a subclass): it certainly did not, and never will;
* it raises ``OutcomeUnknown`` (or a subclass): it may have taken effect, at most once.

Writes are numbered in a client session, and a retry repeats the number, so a write whose answer
was lost (say, because the leader went away) is answered from the cluster's memory of it instead
of being applied a second time.

Run: python examples/kv_cluster.py
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import pathlib
import tempfile
from dataclasses import dataclass, field

import phalanx_aio
from phalanx_aio import Config, NotApplied, OutcomeUnknown, RaftNode, SQLiteStorage
from phalanx_aio._net import free_loopback_ports
from phalanx_aio.kv import KVClient, KVService, KVStateMachine
from phalanx_aio.transport.grpc import GrpcTransport

CLUSTER = "example"


async def start_node(nid: str, addresses: dict[str, str], data_dir: pathlib.Path) -> RaftNode:
    """Start one KV node: the KV service is served by the node's own transport, on its port."""
    service = KVService()
    transport = GrpcTransport(
        node_id=nid, cluster_id=CLUSTER, listen=addresses[nid], extra_handlers=[service]
    )
    node = RaftNode(
        nid,
        address=addresses[nid],
        peers={peer: addr for peer, addr in addresses.items() if peer != nid},
        state_machine=KVStateMachine(),
        storage=SQLiteStorage(data_dir / f"{nid}.db"),
        config=Config.lan(),
        cluster_id=CLUSTER,
        transport=transport,
    )
    service.attach(node)
    await node.start()
    return node


async def tour(endpoints: list[str]) -> None:
    """The four operations. Keys and values are bytes (a str is encoded as UTF-8)."""
    async with KVClient(endpoints, cluster_id=CLUSTER) as kv:
        print("put colour=blue           ->", await kv.put("colour", "blue"))  # previous value
        print("put colour=green          ->", await kv.put("colour", "green"))
        print("get colour                ->", await kv.get("colour"))  # linearizable
        print("cas colour green->red     ->", await kv.cas("colour", "green", "red"))
        print("cas colour green->red     ->", await kv.cas("colour", "green", "red"))  # not an error
        print("cas shape absent->round   ->", await kv.cas("shape", None, "round"))
        print("delete colour             ->", await kv.delete("colour"))
        print("delete colour             ->", await kv.delete("colour"))
        print("get colour                ->", await kv.get("colour"))
        print(f"(the client found the leader at {kv.leader})")


async def certainly_not_applied(endpoints: list[str]) -> None:
    """Calls that raise NotApplied: nothing happened, and retrying is safe."""
    async with KVClient(endpoints, cluster_id=CLUSTER) as kv:
        try:
            await kv.put(b"", b"x")
        except NotApplied as exc:
            print(f"put with an empty key     -> {type(exc).__name__}: {exc}")
    async with KVClient(endpoints, cluster_id="another-cluster") as kv:
        try:
            await kv.put(b"k", b"v")
        except NotApplied as exc:
            print(f"put to the wrong cluster  -> {type(exc).__name__}: {exc}")
    (nobody,) = free_loopback_ports(1)
    async with KVClient([f"127.0.0.1:{nobody}"], cluster_id=CLUSTER, timeout=0.5) as kv:
        try:
            await kv.put(b"k", b"v")
        except NotApplied as exc:
            print(f"put with no server        -> {type(exc).__name__}")


@dataclass
class Tally:
    """What the incrementing clients were told."""

    acknowledged: int = 0
    """compare-and-set calls that returned True: each happened exactly once."""
    unknown: int = 0
    """calls that raised OutcomeUnknown: each happened at most once."""
    in_flight: int = 0
    """compare-and-set calls sent and not yet answered."""
    halfway: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when a compare-and-set starts after 15 acknowledged ones."""


async def incrementer(endpoints: list[str], times: int, tally: Tally) -> None:
    """Add 1 to ``counter`` ``times`` times, each by a read followed by a compare-and-set."""
    async with KVClient(endpoints, cluster_id=CLUSTER) as kv:
        done = 0
        while done < times:
            try:
                current = await kv.get("counter")
                tally.in_flight += 1
                if tally.acknowledged >= 15:
                    tally.halfway.set()
                try:
                    swapped = await kv.cas("counter", current, str(int(current or 0) + 1))
                finally:
                    tally.in_flight -= 1
            except NotApplied:
                continue  # certainly not applied: read again and retry
            except OutcomeUnknown:
                tally.unknown += 1  # may have applied (at most once); the next read will tell
                continue
            if swapped:  # False: another client got there first; read again and retry
                done += 1
                tally.acknowledged += 1


async def fail_over(nodes: dict[str, RaftNode], endpoints: list[str]) -> None:
    """Concurrent increments while the leader is shut down part-way."""
    tally = Tally()
    workers = [asyncio.create_task(incrementer(endpoints, 15, tally)) for _ in range(3)]
    await tally.halfway.wait()  # part-way, with a write in flight
    leader = next(node for node in nodes.values() if node.is_leader)
    print(f"shutting down the leader {leader.id} with {tally.in_flight} write(s) in flight ...")
    await leader.aclose()
    await asyncio.gather(*workers)
    async with KVClient(endpoints, cluster_id=CLUSTER) as kv:
        value = int(await kv.get("counter") or 0)
        print(f"new leader: {(await kv.status()).leader_id}")
    print(f"acknowledged increments: {tally.acknowledged}, unknown outcomes: {tally.unknown}")
    print(f"counter: {value}")
    # Each acknowledged increment happened once; each unknown one at most once.
    if not tally.acknowledged <= value <= tally.acknowledged + tally.unknown:
        raise SystemExit("exactly-once violated!")
    print("every acknowledged increment happened exactly once")


async def main() -> None:
    # The transport logs a warning whenever a peer is unreachable: expected here, while the nodes
    # start one by one and when the leader is shut down.
    logging.basicConfig(level=logging.ERROR)
    ids = ["n1", "n2", "n3"]
    addresses = {nid: f"127.0.0.1:{port}" for nid, port in zip(ids, free_loopback_ports(3), strict=True)}
    endpoints = list(addresses.values())
    with tempfile.TemporaryDirectory(prefix="phalanx-kv-") as tmp:
        async with contextlib.AsyncExitStack() as stack:
            nodes: dict[str, RaftNode] = {}
            for nid in ids:
                nodes[nid] = await start_node(nid, addresses, pathlib.Path(tmp))
                stack.push_async_callback(nodes[nid].aclose)  # aclose is idempotent
            await tour(endpoints)
            await certainly_not_applied(endpoints)
            await fail_over(nodes, endpoints)


if __name__ == "__main__":
    phalanx_aio.run(main())
