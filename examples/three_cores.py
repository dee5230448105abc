"""Three Raft cores in one process, driven by hand (the example from docs/index.md).

Run: python examples/three_cores.py
"""

import random

from phalanx_aio import Config, EntryType, Raft

ids = ["n1", "n2", "n3"]
nodes = {
    nid: Raft.bootstrap(nid, Config.lan(), random.Random(seed), voters=ids) for seed, nid in enumerate(ids)
}
disk = {nid: {"log": {}, "hard_state": None} for nid in ids}  # stands in for storage
applied = {nid: [] for nid in ids}  # stands in for the state machine
network = []  # stands in for the transport


def handle_ready(nid: str) -> None:
    node = nodes[nid]
    if not node.has_ready():
        return
    rd = node.ready()
    # 1. Persist (overwrite from the first index), 2. send, 3. apply, then advance.
    log = disk[nid]["log"]
    if rd.entries:
        for index in [i for i in log if i >= rd.entries[0].index]:
            del log[index]
        log.update((e.index, e) for e in rd.entries)
    if rd.hard_state is not None:
        disk[nid]["hard_state"] = rd.hard_state
    network.extend(rd.messages)
    applied[nid] += [e.data for e in rd.committed_entries if e.type is EntryType.NORMAL]
    node.advance(rd)


def run_until_quiet() -> None:
    while True:
        for nid in ids:
            handle_ready(nid)
        if not network:
            return
        batch = network[:]
        network.clear()
        for msg in batch:
            nodes[msg.to].step(msg)


leader = None
while leader is None:  # 10 to 19 ticks with Config.lan()
    for node in nodes.values():
        node.tick()
    run_until_quiet()
    leader = next((n for n in nodes.values() if n.is_leader), None)

term, index = leader.propose(b"set x=1")
run_until_quiet()
leader.tick()  # followers learn the new commit index from the leader's next message
run_until_quiet()
print(f"{leader.id} leads term {term}; the command is entry {index}")
print(applied)
