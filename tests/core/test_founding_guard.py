"""A store founded in this run votes only for candidates still at the founding entry, until
it learns of a later commit: a member that lost its data and was founded again must not help
a candidate that lacks what it acknowledged win (issue 21)."""

from __future__ import annotations

import random

from phalanx_aio.core import Config, Entry, EntryType, Message, MessageType
from phalanx_aio.core.raft import Raft, bootstrap_state

CFG = Config.lan()


def _vote(r: Raft, frm: str, term: int, index: int, log_term: int) -> bool:
    """Ask ``r`` for a vote (as a leadership transfer would, past any leader stickiness);
    True if granted."""
    r.step(Message(MessageType.VOTE, r.id, frm, term, index=index, log_term=log_term, transfer=True))
    rd = r.ready()
    replies = [m for m in rd.messages if m.type is MessageType.VOTE_RESP and m.to == frm]
    r.advance(rd)
    return bool(replies) and not replies[-1].reject


def _founder(founded_now: bool) -> Raft:
    r = Raft("3", CFG, random.Random(1), bootstrap_state(["1", "2", "3"]), founded_now=founded_now)
    r.advance(r.ready())
    return r


def test_a_refounded_store_refuses_a_candidate_past_the_founding_entry() -> None:
    assert _vote(_founder(False), "1", 7, 40, 6)  # as before: an empty log grants anyone up to date
    assert not _vote(_founder(True), "1", 7, 40, 6)  # founded now: the cluster is past founding


def test_the_first_election_of_a_new_cluster_still_works() -> None:
    assert _vote(_founder(True), "1", 2, 1, 1)


def test_the_guard_lifts_once_a_leader_commits_past_founding() -> None:
    r = _founder(True)
    entries = (Entry(2, 2, EntryType.NOOP, b""), Entry(2, 3, EntryType.NORMAL, b"x"))
    r.step(Message(MessageType.APP, "3", "1", 2, log_term=1, index=1, entries=entries, commit=3))
    while r.has_ready():
        r.advance(r.ready())
    assert r.log.committed == 3
    assert _vote(r, "2", 9, 3, 2)  # it holds what was committed: a member like any other
