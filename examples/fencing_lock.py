"""A replicated lock service that hands out fencing tokens.

Why a lease alone is unsafe
---------------------------
A distributed lock needs a time limit (a lease): otherwise a holder that crashes keeps the lock
forever. But once leases expire, a holder can never be sure that its lease is still valid at
the moment its write reaches the shared resource:

* its process may stop for an unbounded time between checking the lease and writing: a
  stop-the-world garbage collection, a page fault on swapped-out memory, a descheduled or
  migrated virtual machine, a SIGSTOP;
* its clock may run faster or slower than the lock service's, or jump, so it may believe time
  is left when there is none;
* its write may wait in a network queue long after it was sent.

Meanwhile the lease runs out, the service grants the lock to another client, and two clients
both act as the holder: the old holder's late write silently overwrites the new holder's.
Checking the lease more carefully cannot help, since the pause can fall after any check.
Martin Kleppmann's article "How to do distributed locking" (2016) analyses this failure and
argues for the fix that this example implements.

The fix: fencing tokens
-----------------------
Every grant carries a number that increases with every grant. The holder sends its token with
each write, and the resource remembers the largest token it has accepted and refuses writes
that carry a smaller one. The check happens at the resource, at the moment of the write, so no
pause and no clock on the client's side can defeat it: once the new holder has written with its
larger token, the old holder's write is refused, however late it arrives.

This service
------------
The lock table is a Raft state machine replicated on three RaftNodes (in this one process, over
loopback gRPC, SQLite in a temporary directory), so every member agrees on every grant. A
grant's token is the state machine's position in the log: the number of commands it had
applied when it granted the lock, which only grows.

Expiry is deterministic: the state machine never reads a clock. Each command carries the time
at which its client proposed it; the state machine's clock is the largest time it has applied,
and a lease has ended once that clock passes it. All members apply the same commands in the same
order, so all reach the same verdicts. (The clients' clocks may still disagree, which stretches
or shortens leases: one more reason why the tokens, not the leases, keep the resource safe.)

Run: python examples/fencing_lock.py
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import pathlib
import tempfile
import time
from dataclasses import asdict, dataclass

import phalanx_aio
from phalanx_aio import Config, RaftNode, SQLiteStorage, StateMachine
from phalanx_aio._net import free_loopback_ports

# ---------------------------------------------------------------------------- the lock service


@dataclass(frozen=True)
class Grant:
    """Who holds a lock, with which token, until when (in the state machine's time)."""

    owner: str
    token: int
    expires: float


@dataclass(frozen=True)
class Answer:
    """The result of an acquire: ``granted``, and the lock's current grant either way."""

    granted: bool
    grant: Grant


class LockTable(StateMachine):
    """The replicated lock table.

    Commands (JSON): ``{"op": "acquire", "lock", "owner", "ttl", "now"}`` and
    ``{"op": "release", "lock", "token", "now"}``, where ``now`` is the proposer's clock.
    """

    def __init__(self) -> None:
        self.locks: dict[str, Grant] = {}
        self.clock = 0.0
        """The largest ``now`` applied: the state machine's time (it never goes back)."""
        self.applied = 0
        """Commands applied: the state machine's log position, used as the fencing token."""

    def apply(self, command: bytes) -> Answer | bool:
        """Apply one command; its result depends only on the state and the command."""
        cmd = json.loads(command)
        self.applied += 1
        self.clock = max(self.clock, float(cmd["now"]))
        current = self.locks.get(cmd["lock"])
        live = current is not None and self.clock < current.expires
        if cmd["op"] == "acquire":
            if live and current is not None and current.owner != cmd["owner"]:
                return Answer(False, current)
            # Free, expired, or already this owner's (so a retried acquire is harmless: same
            # token, lease extended).
            token = current.token if live and current is not None else self.applied
            grant = Grant(cmd["owner"], token, self.clock + float(cmd["ttl"]))
            self.locks[cmd["lock"]] = grant
            return Answer(True, grant)
        if cmd["op"] == "release":
            if live and current is not None and current.token == cmd["token"]:
                del self.locks[cmd["lock"]]
                return True
            return False  # not the holder any more (the lease ended, maybe granted again)
        raise ValueError(f"unknown operation {cmd['op']!r}")

    def snapshot(self) -> bytes:
        """The whole table as JSON."""
        locks = {name: asdict(g) for name, g in self.locks.items()}
        return json.dumps({"locks": locks, "clock": self.clock, "applied": self.applied}).encode()

    def restore(self, data: bytes) -> None:
        """Replace the table with a snapshot's."""
        state = json.loads(data)
        self.locks = {name: Grant(**g) for name, g in state["locks"].items()}
        self.clock, self.applied = state["clock"], state["applied"]


class LockClient:
    """A client of the lock service, through any member (a follower forwards to the leader)."""

    def __init__(self, node: RaftNode, owner: str) -> None:
        self.node = node
        self.owner = owner

    async def _propose(self, **fields: object) -> object:
        # The client's clock reading travels in the command: that is the service's only clock.
        return await self.node.propose(json.dumps({**fields, "now": time.time()}).encode())

    async def acquire(self, lock: str, ttl: float) -> Answer:
        """Try once to take ``lock`` for ``ttl`` seconds."""
        answer = await self._propose(op="acquire", lock=lock, owner=self.owner, ttl=ttl)
        assert isinstance(answer, Answer)
        return answer

    async def release(self, lock: str, token: int) -> bool:
        """Give ``lock`` back; False if the grant of ``token`` had already ended."""
        return bool(await self._propose(op="release", lock=lock, token=token))


# ---------------------------------------------------------------------------- the resource


class FencedStore:
    """A shared resource that checks fencing tokens."""

    def __init__(self) -> None:
        self.value = ""
        self.newest_token = 0

    def write(self, token: int, value: str) -> bool:
        """Store ``value`` unless ``token`` is older than the newest token seen."""
        if token < self.newest_token:
            return False
        self.newest_token, self.value = token, value
        return True


class TrustingStore:
    """A shared resource that trusts its clients' leases (what goes wrong without tokens)."""

    def __init__(self) -> None:
        self.value = ""

    def write(self, value: str) -> bool:
        """Store ``value``."""
        self.value = value
        return True


def write(fenced: FencedStore, trusting: TrustingStore, who: str, token: int, value: str) -> None:
    """Make the same write to both stores and print what each did with it."""
    verdicts = {"fenced store": fenced.write(token, value), "trusting store": trusting.write(value)}
    for store, ok in verdicts.items():
        verdict = "accepted" if ok else f"REJECTED (token {token} < newest {fenced.newest_token})"
        print(f"  {who} writes {value!r} with token {token} to the {store}: {verdict}")


# ---------------------------------------------------------------------------- the story


def lock_of(table: LockTable) -> Grant | None:
    """What ``node.read`` runs: the grant of the lock ``report``, if any."""
    return table.locks.get("report")


async def story(nodes: list[RaftNode]) -> None:
    fenced, trusting = FencedStore(), TrustingStore()
    a = LockClient(nodes[0], "client-A")
    b = LockClient(nodes[1], "client-B")

    got = await a.acquire("report", ttl=0.5)
    token_a = got.grant.token
    print(f"client-A acquires 'report': granted={got.granted}, token {token_a}, lease 0.5 s")
    write(fenced, trusting, "client-A", token_a, "report v1 by A")

    left = got.grant.expires - time.time()
    print(f"client-A checks its lease ({left:.2f} s left) and prepares its next write ...")
    print("client-A is paused (a long garbage-collection pause) before sending it")

    while True:  # client-B wants the lock too, and waits for the lease to run out
        got = await b.acquire("report", ttl=5.0)
        if got.granted:
            break
        print(f"client-B acquires 'report': held by {got.grant.owner}, retrying when its lease ends")
        await asyncio.sleep(max(0.0, got.grant.expires - time.time()) + 0.01)
    token_b = got.grant.token
    print(f"client-B acquires 'report': granted={got.granted}, token {token_b} (A's lease expired)")
    write(fenced, trusting, "client-B", token_b, "report v2 by B")

    print("client-A resumes, still believing that it holds the lock, and sends its write")
    write(fenced, trusting, "client-A", token_a, "report v1.1 by A")
    print(f"fenced store holds:   {fenced.value!r}")
    print(f"trusting store holds: {trusting.value!r}  (B's update is lost)")

    # Every member applied the same commands, clock readings included, so every member reached
    # the same verdicts; read the lock on each of them (a linearizable read).
    for node in nodes:
        grant = await node.read(lock_of)
        assert grant is not None
        print(f"on {node.id}: 'report' is held by {grant.owner} with token {grant.token}")
    print(f"client-A releases token {token_a}: {await a.release('report', token_a)}  (not A's lock)")
    print(f"client-B releases token {token_b}: {await b.release('report', token_b)}")


async def main() -> None:
    # The transport logs a warning when a peer is unreachable: expected while the nodes start.
    logging.basicConfig(level=logging.ERROR)
    ids = ["n1", "n2", "n3"]
    addresses = {nid: f"127.0.0.1:{port}" for nid, port in zip(ids, free_loopback_ports(3), strict=True)}
    with tempfile.TemporaryDirectory(prefix="phalanx-lock-") as tmp:
        async with contextlib.AsyncExitStack() as stack:
            nodes = []
            for nid in ids:
                node = RaftNode(
                    nid,
                    address=addresses[nid],
                    peers={peer: addr for peer, addr in addresses.items() if peer != nid},
                    state_machine=LockTable(),
                    storage=SQLiteStorage(pathlib.Path(tmp) / f"{nid}.db"),
                    config=Config.lan(),
                )
                await node.start()
                stack.push_async_callback(node.aclose)
                nodes.append(node)
            for node in nodes:
                await node.wait_for_leader()
            await story(nodes)


if __name__ == "__main__":
    phalanx_aio.run(main())
