"""The crash test's workload: a deterministic sequence of Raft-shaped writes.

Run as a script it is the child process: it opens the store, then performs steps ``start+1``,
``start+2``, ... forever, writing ``"<k>\\n"`` to stdout (unbuffered) as soon as the write of
step ``k`` has returned. The parent kills it at random and checks the store.

Imported, it gives the parent the same steps and a model of what the store must hold.

    python storage_crash_workload.py DB_PATH SEED START_STEP
"""

from __future__ import annotations

import asyncio
import os
import random
import sys
from dataclasses import dataclass

from phalanx_aio.core.raft import InitialState
from phalanx_aio.core.types import ConfState, Entry, EntryType, HardState, Snapshot, SnapshotMeta

NODE, CLUSTER = "crash-node", "crash-cluster"
CONF = ConfState(voters=frozenset({"n1", "n2", "n3"}), contexts=(("n1", b"a"), ("n2", b"b"), ("n3", b"c")))


@dataclass(frozen=True)
class Step:
    """One durable write: ``save(hard_state, entries, snapshot)`` or ``save_snapshot(local)``."""

    k: int
    hard_state: HardState | None = None
    entries: tuple[Entry, ...] = ()
    snapshot: Snapshot | None = None
    local: Snapshot | None = None


def payload(k: int, index: int, term: int) -> bytes:
    """A 64-byte payload naming the step, index and term that wrote it."""
    return f"k{k}/i{index}/t{term}/".encode().ljust(64, b"#")


def make_step(seed: int, k: int, state: InitialState) -> Step:
    """Step ``k`` given what the store holds before it (deterministic)."""
    rng = random.Random(f"{seed}/{k}")
    hs, snap, entries = state.hard_state, state.snapshot, state.entries
    snap_index = snap.meta.index
    last = entries[-1].index if entries else snap_index
    last_term = entries[-1].term if entries else snap.meta.term
    roll = rng.random()
    if hs.term > 0 and roll < 0.06 and hs.commit > snap_index:  # the application compacts
        index = rng.randint(snap_index + 1, hs.commit)
        term = entries[index - snap_index - 1].term
        data = f"local snapshot {k} ".encode() * rng.randint(1, 3000)
        return Step(k, local=Snapshot(SnapshotMeta(index, term, CONF), data))
    if hs.term > 0 and roll < 0.09:  # a leader sends a snapshot beyond our log
        term = max(hs.term, last_term) + 1
        index = last + rng.randint(1, 5)
        data = f"leader snapshot {k} ".encode() * rng.randint(1, 3000)
        new = tuple(
            Entry(term, i, EntryType.NORMAL, payload(k, i, term)) for i in range(index + 1, index + 4)
        )
        return Step(k, HardState(term, "n2", index), new, Snapshot(SnapshotMeta(index, term, CONF), data))
    if hs.term == 0 or roll < 0.25:  # a new term: overwrite an uncommitted suffix
        term = max(hs.term, last_term) + 1
        start = rng.randint(max(hs.commit, snap_index) + 1, last + 1)
        new = tuple(
            Entry(term, i, EntryType.NOOP if i == start else EntryType.NORMAL, payload(k, i, term))
            for i in range(start, start + rng.randint(1, 10))
        )
        return Step(k, HardState(term, rng.choice(["n1", "n2", "n3"]), hs.commit), new)
    n = rng.randint(1, 30)  # appends in the current term, commit moves on
    new = tuple(
        Entry(hs.term, i, EntryType.NORMAL, payload(k, i, hs.term)) for i in range(last + 1, last + 1 + n)
    )
    commit = rng.randint(hs.commit, last + n)
    return Step(k, HardState(hs.term, hs.vote, commit) if commit != hs.commit else None, new)


def apply(state: InitialState, step: Step) -> InitialState:
    """What the store holds after ``step`` (the model the parent checks against)."""
    hs, snap, entries = state.hard_state, state.snapshot, list(state.entries)
    if step.local is not None:
        index = step.local.meta.index
        return InitialState(hs, step.local, tuple(e for e in entries if e.index > index))
    if step.snapshot is not None:
        snap, entries = step.snapshot, []
    if step.entries:
        first = step.entries[0].index
        entries = [e for e in entries if e.index < first] + list(step.entries)
    return InitialState(step.hard_state or hs, snap, tuple(entries))


async def child(path: str, seed: int, start: int) -> None:
    """Open the store and write steps forever, acknowledging each on stdout."""
    from phalanx_aio.storage import SQLiteStorage

    store = SQLiteStorage(path)
    state = (await store.open(node_id=NODE, cluster_id=CLUSTER)).state
    k = start
    while k < start + 100_000:
        k += 1
        step = make_step(seed, k, state)
        if step.local is not None:
            await store.save_snapshot(step.local)
        else:
            await store.save(hard_state=step.hard_state, entries=step.entries, snapshot=step.snapshot)
        state = apply(state, step)
        os.write(1, b"%d\n" % k)
    await store.aclose()


if __name__ == "__main__":
    asyncio.run(child(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
