"""A node that knows no configuration (joining with an empty store) never votes.

It may be a member that lost its data and is coming back under its old id: its old votes and
acknowledgements are forgotten, so a vote from it could be a second vote in a term it already
voted in. The rule costs no liveness: a real member always knows a configuration (founders from
the bootstrap entry, joiners from the log before they are promoted).
"""

from __future__ import annotations

import random

import pytest

from phalanx_aio.core.raft import InitialState, Raft
from phalanx_aio.core.types import Message, MessageType
from tests.core.harness import PAPER, drain, new_raft


@pytest.mark.parametrize("kind", [MessageType.VOTE, MessageType.PRE_VOTE])
def test_a_node_without_configuration_refuses_every_vote(kind: MessageType) -> None:
    empty = Raft("3", PAPER, random.Random(0), InitialState())
    assert not empty.conf.members()
    empty.step(Message(kind, "3", "1", 5, index=10, log_term=4))
    (resp,) = drain(empty)
    assert resp.to == "1" and resp.reject
    assert empty.vote is None


@pytest.mark.parametrize("kind", [MessageType.VOTE, MessageType.PRE_VOTE])
def test_a_configured_node_still_grants_an_up_to_date_candidate(kind: MessageType) -> None:
    r = new_raft("3")
    r.step(Message(kind, "3", "1", 5, index=10, log_term=4))
    (resp,) = drain(r)
    assert resp.to == "1" and not resp.reject
