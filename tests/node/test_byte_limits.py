"""Limits counted in bytes, not only in entries (issue 23)."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from phalanx_aio.core import Config
from phalanx_aio.errors import ProposalDropped
from tests.node.harness import DEADLINE, FAST, Harness


async def test_large_commands_bring_a_snapshot_long_before_snapshot_every_entries() -> None:
    # 64 KiB commands, a snapshot due every 10,000 entries or 256 KiB of log: the log is
    # compacted after a handful of commands, not after 640 MB.
    h = Harness(["n1", "n2", "n3"], snapshot_bytes=256 << 10)
    try:
        for nid in h.ids:
            await h.start(nid)
        leader = await h.leader()
        for _ in range(12):
            await leader.propose(b"incr 1" + b" " * (64 << 10), timeout=DEADLINE)
        await h.until(lambda: all(h.stores[n]._snapshot.meta.index > 0 for n in h.ids))
        assert all(h.nodes[n].status().first_index > 1 for n in h.ids)
    finally:
        await h.aclose()


def test_the_presets_bound_the_uncommitted_bytes() -> None:
    for preset in (Config.lan(), Config.global_mesh(), Config.global_mesh_adaptive()):
        assert preset.max_uncommitted_bytes == 64 << 20
    assert FAST.max_uncommitted_bytes == 64 << 20


async def test_a_leader_refuses_commands_while_too_many_bytes_wait_to_commit() -> None:
    # No check quorum: the leader keeps leading while its followers' answers are cut.
    config = FAST.replace(max_uncommitted_bytes=1 << 20, check_quorum=False)
    h = Harness(["n1", "n2", "n3"], config=config)
    try:
        for nid in h.ids:
            await h.start(nid)
        leader = await h.leader()
        for nid in h.ids:
            if nid != leader.id:
                h.net.blocked.add((nid, leader.id))  # nothing commits any more
        big = b"incr 1" + b" " * (256 << 10)
        waiting = []
        for _ in range(3):  # 768 KiB wait to commit, one command per turn; a fourth would pass 1 MiB
            last = leader.status().last_index
            waiting.append(asyncio.ensure_future(leader.propose(big, timeout=DEADLINE)))
            await h.until(lambda last=last: leader.status().last_index > last)  # type: ignore[misc]
        with pytest.raises(ProposalDropped, match="uncommitted"):
            await leader.propose(big, timeout=DEADLINE)
        for w in waiting:
            w.cancel()
    finally:
        await h.aclose()


async def test_proposals_past_max_pending_bytes_are_refused_at_once() -> None:
    h = Harness(["n1", "n2", "n3"], max_pending_bytes=1000)
    try:
        for nid in h.ids:
            await h.start(nid)
        leader = await h.leader()
        h.net.isolate(leader.id)  # nothing commits: proposals stay pending
        first = asyncio.ensure_future(leader.propose(b"incr 1" + b" " * 2000, timeout=DEADLINE))
        await h.until(lambda: leader.status().pending_proposals == 1)  # alone, it may be any size
        with pytest.raises(ProposalDropped, match="bytes of proposals pending"):
            await leader.propose(b"incr 1", timeout=DEADLINE)
        with pytest.raises(ProposalDropped, match="bytes of proposals pending"):
            await leader.propose_many([b"incr 1"], timeout=DEADLINE)
        first.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await first
        assert leader._pending_bytes == 0  # the budget is given back whatever the outcome
    finally:
        await h.aclose()
