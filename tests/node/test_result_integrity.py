"""Every caller gets its own command's outcome: across restarts, leader changes and reads.

Three nodes on the in-memory transport with in-memory stores kept across restarts. Each test
here failed on the driver as it was before run nonces and answered forwards (issue 15).
"""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from phalanx_aio.core import Config, Message, MessageType
from phalanx_aio.errors import NotApplied, PhalanxError, ProposalDropped, Timeout
from tests.node.harness import DEADLINE, Harness


async def _cluster() -> Harness:
    h = Harness(["n1", "n2", "n3"])
    for nid in h.ids:
        await h.start(nid)
    return h


async def _follower_proposes_unseen(h: Harness, command: bytes) -> tuple[str, str]:
    """A follower F proposes ``command`` while it hears nothing from the leader: the entry
    commits on the other two, F's caller times out. Returns (leader id, F's id)."""
    leader = await h.leader()
    f = next(nid for nid in h.ids if nid != leader.id)
    await h.until(lambda: h.nodes[f].leader_id == leader.id)
    h.net.blocked.add((leader.id, f))
    commit = leader.status().commit
    with pytest.raises(Timeout):
        await h.nodes[f].propose(command, timeout=0.5)
    await h.until(lambda: leader.status().applied > commit)  # committed and applied there
    return leader.id, f


async def test_an_entry_of_the_previous_run_never_answers_a_new_proposal() -> None:
    # F's previous run proposed A (request 1). After a restart F proposes B, also request 1,
    # and B's forward is lost. When F applies A's entry, B must not take A's result.
    h = await _cluster()
    try:
        leader, f = await _follower_proposes_unseen(h, b"incr 1000")
        await h.stop(f)
        h.net.heal()
        # F hears the leader's heartbeats but gets no entries until B is proposed; B is lost.
        h.net.drop = lambda m: (m.frm == f and m.type is MessageType.PROP) or (
            m.to == f and m.type is MessageType.APP
        )
        node = await h.start(f)
        await node.wait_for_leader(DEADLINE)
        b = asyncio.ensure_future(node.propose(b"incr 1", timeout=3.0))
        await h.until(lambda: node.status().pending_proposals == 1)
        assert h.sms[f].value == 0  # A's entry has not reached F yet
        h.net.drop = lambda m: m.frm == f and m.type is MessageType.PROP
        await h.until(lambda: h.sms[f].value == 1000)  # F applied A's entry
        with pytest.raises(Timeout):
            await b
        assert h.sms[leader].value == 1000  # B never committed
    finally:
        await h.aclose()


async def test_an_error_of_the_previous_run_never_fails_a_new_proposal() -> None:
    # A (previous run, request 1) made the state machine raise; B (this run, request 1)
    # commits and must get its own result, not A's ValueError.
    h = await _cluster()
    try:
        _, f = await _follower_proposes_unseen(h, b"boom")
        await h.stop(f)
        h.net.heal()
        node = await h.start(f)
        await node.wait_for_leader(DEADLINE)
        assert await node.propose(b"incr 5", timeout=DEADLINE) == 5
    finally:
        await h.aclose()


async def test_a_read_answer_meant_for_the_previous_run_serves_no_new_read() -> None:
    h = await _cluster()
    try:
        leader = await h.leader()
        f = next(nid for nid in h.ids if nid != leader.id)
        await h.until(lambda: h.nodes[f].leader_id == leader.id)
        captured: list[Message] = []

        def capture(m: Message) -> bool:
            if m.type is MessageType.READ_INDEX_RESP and m.to == f:
                captured.append(m)
                return True
            return False

        h.net.drop = capture  # the answer to F's first read is held back
        with pytest.raises(Timeout):
            await h.nodes[f].read(lambda sm: sm.value, timeout=0.5)
        assert len(captured) == 1
        await h.stop(f)
        h.net.drop = lambda m: m.type is MessageType.READ_INDEX and m.frm == f  # the new read is lost
        node = await h.start(f)
        await h.until(lambda: node.leader_id == leader.id)
        read = asyncio.ensure_future(node.read(lambda sm: sm.value, timeout=1.0))
        await h.until(lambda: bool(node._reads))  # the read is asked (and its request lost)
        node.on_messages(leader.id, captured)  # the old answer arrives late
        with pytest.raises(Timeout):
            await read
    finally:
        await h.aclose()


async def test_a_forward_refused_by_the_leader_fails_at_once_as_not_applied() -> None:
    # The leader is handing leadership over (and the hand-over is held back): it refuses a
    # forwarded proposal, and the follower's caller learns it at once instead of timing out.
    h = Harness(["n1", "n2", "n3"], config=Config.lan(tick_interval=0.01, election_ticks=100))
    try:
        for nid in h.ids:
            await h.start(nid)
        leader = await h.leader()
        f, other = (nid for nid in h.ids if nid != leader.id)
        await h.until(lambda: h.nodes[f].leader_id == leader.id)
        h.net.drop = lambda m: m.type is MessageType.TIMEOUT_NOW
        transfer = asyncio.ensure_future(leader.transfer_leadership(other, timeout=5.0))
        await h.until(lambda: leader.status().core.lead_transferee == other)
        with pytest.raises(ProposalDropped):
            await h.nodes[f].propose(b"incr 1", timeout=3.0)
        transfer.cancel()
        with contextlib.suppress(asyncio.CancelledError, PhalanxError):
            await transfer
    finally:
        await h.aclose()


async def test_forwards_lost_with_a_crashed_leader_end_definitely_and_apply_once() -> None:
    # The leader crashes (its messages stop both ways) while a follower has proposals in
    # flight. Each one ends in success or NotApplied, never Timeout, and every success was
    # applied exactly once on every node.
    h = await _cluster()
    try:
        leader = await h.leader()
        f = next(nid for nid in h.ids if nid != leader.id)
        await h.until(lambda: h.nodes[f].leader_id == leader.id)
        node = h.nodes[f]
        calls = [asyncio.ensure_future(node.propose(b"incr 1", timeout=DEADLINE)) for _ in range(200)]
        for _ in range(3):
            await asyncio.sleep(0)
        h.net.isolate(leader.id)  # some forwards reached it, some are lost
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        assert not [o for o in outcomes if isinstance(o, Timeout)]
        ok = [o for o in outcomes if not isinstance(o, BaseException)]
        assert all(isinstance(o, NotApplied) for o in outcomes if isinstance(o, BaseException))
        assert sorted(ok) == list(range(1, len(ok) + 1))  # each result its own, none twice
        live = [nid for nid in h.ids if nid != leader.id]
        await h.until(lambda: all(h.sms[nid].applied == len(ok) for nid in live))
    finally:
        await h.aclose()


async def test_retries_go_only_to_a_leader_known_to_check_them() -> None:
    # A leader of an earlier release never answers forwards and would append a retry again.
    # Here every answer is lost, as if every node were of that release: the follower probes
    # the new leader, hears nothing, and never retries, so nothing can apply twice (its
    # callers time out: their outcome is unknown).
    h = await _cluster()
    try:
        leader = await h.leader()
        f = next(nid for nid in h.ids if nid != leader.id)
        await h.until(lambda: h.nodes[f].leader_id == leader.id)
        sent: list[Message] = []

        def old_release(m: Message) -> bool:
            if m.frm == f and m.type is MessageType.PROP:
                sent.append(m)
            if m.frm == f and m.type in (MessageType.VOTE, MessageType.PRE_VOTE):
                return True  # the third node, not the follower, becomes the next leader
            return m.type is MessageType.PROP_RESP or (m.type is MessageType.PROP and m.to == leader.id)

        h.net.drop = old_release  # forwards to the leader are lost, answers never come
        call = asyncio.ensure_future(h.nodes[f].propose(b"incr 1", timeout=3.0))
        await h.until(lambda: len(sent) == 1)
        h.net.isolate(leader.id)
        await h.until(lambda: h.nodes[f].leader_id not in (None, leader.id))
        with pytest.raises(Timeout):
            await call
        assert [m.entries for m in sent if m.index] == []  # no retry
        assert [m for m in sent if not m.entries]  # but a probe
    finally:
        await h.aclose()
