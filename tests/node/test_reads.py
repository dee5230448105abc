"""Reads asked together share one read index; pending reads are bounded (issue 23)."""

from __future__ import annotations

import asyncio

import pytest

from phalanx_aio.core import Message, MessageType
from phalanx_aio.errors import ProposalDropped, Timeout
from tests.node.harness import DEADLINE, Harness


async def test_reads_asked_together_share_one_read_index() -> None:
    h = Harness(["n1", "n2", "n3"])
    try:
        for nid in h.ids:
            await h.start(nid)
        leader = await h.leader()
        await leader.propose(b"incr 7", timeout=DEADLINE)
        f = next(nid for nid in h.ids if nid != leader.id)
        node = h.nodes[f]
        await h.until(lambda: node.leader_id == leader.id)
        asked: list[Message] = []

        def count(m: Message) -> bool:
            if m.type is MessageType.READ_INDEX and m.frm == f:
                asked.append(m)
            return False

        h.net.drop = count
        values = await asyncio.gather(*(node.read(lambda sm: sm.value, timeout=DEADLINE) for _ in range(500)))
        assert values == [7] * 500
        assert 1 <= len(asked) <= 5  # one request per loop turn, not one per read
    finally:
        await h.aclose()


async def test_reads_past_the_limit_are_refused_at_once_and_the_others_still_served() -> None:
    h = Harness(["n1", "n2", "n3"], max_pending_reads=5)
    try:
        for nid in h.ids:
            await h.start(nid)
        leader = await h.leader()
        f = next(nid for nid in h.ids if nid != leader.id)
        node = h.nodes[f]
        await h.until(lambda: node.leader_id == leader.id)
        h.net.drop = lambda m: m.type is MessageType.READ_INDEX  # reads wait for an answer
        waiting = [asyncio.ensure_future(node.read(lambda sm: sm.value, timeout=1.0)) for _ in range(5)]
        await asyncio.sleep(0)
        with pytest.raises(ProposalDropped, match="5 reads pending"):
            await node.read(lambda sm: sm.value)
        for w in waiting:
            with pytest.raises(Timeout):
                await w
        h.net.drop = None
        assert await node.read(lambda sm: sm.value, timeout=DEADLINE) == 0  # room again
    finally:
        await h.aclose()
