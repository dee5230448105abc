"""A replicated counter: an application that embeds RaftNode.

Three RaftNodes run in this one process, each with its own SQLite file (in a temporary
directory) and its own gRPC port on 127.0.0.1, just as three servers would. The script

1. proposes increments on the leader and on a follower (which forwards them to the leader),
   printing what each ``await node.propose(...)`` returns: the state machine's result;
2. reads the counter on a follower with ``node.read(...)``, a linearizable read;
3. shuts the leader down, lets the other two elect a new one, and keeps counting;
4. restarts the old leader from its SQLite file and reads the total there.

Run: python examples/replicated_counter.py
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import pathlib
import tempfile
import time

import phalanx_aio
from phalanx_aio import Config, RaftNode, SQLiteStorage, StateMachine
from phalanx_aio._net import free_loopback_ports


class Counter(StateMachine):
    """The replicated state: one integer. Commands are ``b"incr <n>"``."""

    def __init__(self) -> None:
        self.value = 0

    def apply(self, command: bytes) -> int:
        """Add to the counter and return the new value (``propose``'s result)."""
        verb, amount = command.split()
        if verb != b"incr":
            raise ValueError(f"unknown command {command!r}")  # handed to the proposer
        self.value += int(amount)
        return self.value

    def snapshot(self) -> bytes:
        """The whole state as bytes."""
        return str(self.value).encode()

    def restore(self, data: bytes) -> None:
        """Replace the state with a snapshot's."""
        self.value = int(data)


def counter_value(sm: Counter) -> int:
    """What ``node.read`` runs on the state machine once it is up to date."""
    return sm.value


def make_node(nid: str, addresses: dict[str, str], data_dir: pathlib.Path) -> RaftNode:
    """Node ``nid`` of the cluster (the same call starts it fresh or restarts it)."""
    return RaftNode(
        nid,
        address=addresses[nid],
        peers={peer: addr for peer, addr in addresses.items() if peer != nid},
        state_machine=Counter(),
        storage=SQLiteStorage(data_dir / f"{nid}.db"),
        config=Config.lan(),
    )


async def agreed_leader(nodes: list[RaftNode], timeout: float = 10.0) -> RaftNode:
    """The leader, once every node in ``nodes`` knows it.

    (``node.wait_for_leader()`` returns the leader a node knows of, which, just after the leader
    has gone, is still the old one; and a proposal or read forwarded to a leader that has gone
    is never answered: it ends in ``Timeout``. So after losing the leader, wait for this.)
    """
    async with asyncio.timeout(timeout):
        while True:
            leaders = [n for n in nodes if n.is_leader]
            if leaders and all(n.leader_id == leaders[0].id for n in nodes):
                return leaders[0]
            await asyncio.sleep(0.02)


async def main() -> None:
    # The library logs through `logging`. Its warnings (peers unreachable while the nodes start
    # and stop, the state machine raising) are expected here; show only errors.
    logging.basicConfig(level=logging.ERROR)
    ids = ["n1", "n2", "n3"]
    addresses = {nid: f"127.0.0.1:{port}" for nid, port in zip(ids, free_loopback_ports(3), strict=True)}
    with tempfile.TemporaryDirectory(prefix="phalanx-counter-") as tmp:
        data_dir = pathlib.Path(tmp)
        async with contextlib.AsyncExitStack() as stack:
            nodes = {nid: make_node(nid, addresses, data_dir) for nid in ids}
            for node in nodes.values():
                await node.start()
                stack.push_async_callback(node.aclose)  # aclose is idempotent

            leader = await agreed_leader(list(nodes.values()))
            f1, f2 = [n for n in nodes.values() if n is not leader]
            print(f"leader: {leader.id}")

            # propose() returns once the command is committed and applied on this node.
            print(f"{leader.id} (leader)   propose incr 5 -> {await leader.propose(b'incr 5')}")
            print(f"{f1.id} (follower) propose incr 3 -> {await f1.propose(b'incr 3')}  (forwarded)")
            # read() on a follower asks the leader for its commit index (ReadIndex), waits until
            # it has applied that far, then runs the function: it sees every completed write.
            print(f"{f2.id} (follower) read -> {await f2.read(counter_value)}  (linearizable)")
            # An exception raised by apply() is handed to the proposer. The entry is committed all
            # the same, and every member raises on it: validate commands before proposing them.
            try:
                await leader.propose(b"decr 1")
            except ValueError as exc:
                print(f"{leader.id} (leader)   propose decr 1 -> ValueError: {exc}")

            # The leader goes away; the two others elect a new one and carry on.
            old = leader
            await old.aclose()
            started = time.monotonic()
            survivors = [f1, f2]
            leader = await agreed_leader(survivors)
            print(f"shut down {old.id}; new leader: {leader.id} after {time.monotonic() - started:.1f} s")
            follower = f1 if leader is f2 else f2
            print(f"{follower.id} (follower) propose incr 2 -> {await follower.propose(b'incr 2')}")
            print(f"{leader.id} (leader)   read -> {await leader.read(counter_value)}")

            # The old leader restarts from its SQLite file, as a follower, and catches up.
            restarted = make_node(old.id, addresses, data_dir)
            await restarted.start()
            stack.push_async_callback(restarted.aclose)
            await restarted.wait_for_leader()
            print(f"{old.id} restarted from its SQLite file; read -> {await restarted.read(counter_value)}")

            totals = {n.id: await n.read(counter_value) for n in (*survivors, restarted)}
            print("every member reads:", ", ".join(f"{nid}={v}" for nid, v in sorted(totals.items())))


if __name__ == "__main__":
    phalanx_aio.run(main())
