"""Joint consensus (Raft thesis §4.3): several voters changed at once through C_old,new, and
the removed members remembered in the replicated configuration."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from phalanx_aio.core import Config, ConfState, EntryType, Role
from phalanx_aio.core.membership import (
    ConfChange,
    ConfChangeType,
    apply_change,
    decode_conf,
    decode_conf_changes,
    encode_conf,
    enter_joint,
    leave_joint,
)
from phalanx_aio.core.quorum import VoteResult, joint_quorum_index, joint_vote_result
from phalanx_aio.errors import ProposalDropped, ProtocolError
from tests.core.harness import Network, ids

ADD_LEARNER, ADD_VOTER, REMOVE, PROMOTE = (
    ConfChangeType.ADD_LEARNER,
    ConfChangeType.ADD_VOTER,
    ConfChangeType.REMOVE,
    ConfChangeType.PROMOTE,
)
CFG = Config.lan(eager_commit=True)


def five() -> Network:
    net = Network.bootstrap(5, CFG)
    net.campaign("1")
    assert net.leaders() == ["1"]
    net.propose("1", b"x")
    return net


def add_learners(net: Network, *nids: str) -> None:
    """Start empty nodes and add them as learners, one change at a time, until caught up."""
    for nid in nids:
        net.add(nid)
        net["1"].propose_conf_change(ConfChange(ADD_LEARNER, nid, b"addr" + nid.encode()))
        net.stabilize()
    assert all(net[n].log.last_index() == net["1"].log.last_index() for n in nids)


# ------------------------------------------------------------------------------ the rules


def test_two_voters_swapped_in_one_change() -> None:
    """Replace voters 4 and 5 of five by learners 6 and 7: the joint configuration is
    committed with both majorities, then C_new is appended by the leader by itself."""
    net = five()
    add_learners(net, "6", "7")
    changes = [
        ConfChange(PROMOTE, "6"),
        ConfChange(PROMOTE, "7"),
        ConfChange(REMOVE, "4"),
        ConfChange(REMOVE, "5"),
    ]
    _, index = net["1"].propose_joint_change(changes)
    joint = net["1"].conf
    assert joint.voters == {"1", "2", "3", "6", "7"} and joint.voters_outgoing == set(ids(5))
    assert joint.context("4") == b""  # founders have no context; they keep theirs while joint
    net.stabilize()
    final = net["1"].conf
    assert not final.joint and final.voters == {"1", "2", "3", "6", "7"}
    assert dict(final.removed) == {"4": index + 1, "5": index + 1}  # removed when C_new was appended
    assert all(net[n].conf == final for n in ["1", "2", "3", "6", "7"])
    net.propose("1", b"after")
    assert net.applied("6")[-1] == b"after"


def test_joint_commit_needs_the_outgoing_majority_too() -> None:
    """In C_old,new a majority of the new voters alone commits nothing."""
    net = five()
    add_learners(net, "6", "7")
    changes = [
        ConfChange(PROMOTE, "6"),
        ConfChange(PROMOTE, "7"),
        ConfChange(REMOVE, "4"),
        ConfChange(REMOVE, "5"),
    ]
    net["1"].propose_joint_change(changes)
    net.stabilize()  # C_new in force
    # Enter a second joint configuration whose old majority ({1,2,3,6,7}: three of them) is
    # cut off except the leader and 2, while the new half {1,2,8} hears the leader.
    add_learners(net, "8")
    net["1"].propose_joint_change(
        [ConfChange(PROMOTE, "8"), ConfChange(REMOVE, "3"), ConfChange(REMOVE, "6"), ConfChange(REMOVE, "7")]
    )
    for nid in ("3", "6", "7"):
        net.isolate(nid)
    net.stabilize()
    conf = net["1"].conf
    assert conf.joint and conf.voters == {"1", "2", "8"}
    committed = net["1"].log.committed
    assert net["1"].confs.last_index > committed  # the new half alone ({1,2,8}) cannot commit it
    net.heal()
    for _ in range(3):
        net.tick_all(CFG.heartbeat_ticks)  # heartbeats reach the healed voters; they catch up
    assert not net["1"].conf.joint and net["1"].conf.voters == {"1", "2", "8"}


def test_elections_in_a_joint_configuration_need_both_majorities() -> None:
    net = five()
    add_learners(net, "6", "7")
    # Keep the joint configuration in force: drop the entry that would leave it.
    net["1"].propose_joint_change(
        [ConfChange(PROMOTE, "6"), ConfChange(PROMOTE, "7"), ConfChange(REMOVE, "4"), ConfChange(REMOVE, "5")]
    )
    net.stabilize()
    assert not net["1"].conf.joint
    # A fresh joint change, frozen in place by crashing the leader once everyone has it.
    add_learners(net, "8", "9")
    net["1"].propose_joint_change(
        [ConfChange(PROMOTE, "8"), ConfChange(PROMOTE, "9"), ConfChange(REMOVE, "6"), ConfChange(REMOVE, "7")]
    )
    # Everyone gets C_old,new and learns it committed, but C_new never leaves the leader.
    net.drop_if = lambda m: (
        m.frm == "1" and any(e.type is EntryType.CONF and not decode_conf(e.data)[1].joint for e in m.entries)
    )
    net.stabilize()
    net.crash("1")
    net.heal()
    joint = net["2"].conf
    assert (
        joint.joint
        and joint.voters == {"1", "2", "3", "8", "9"}
        and joint.voters_outgoing == {"1", "2", "3", "6", "7"}
    )
    # 6 and 7 (outgoing only) and 8 and 9 (incoming only) each miss a majority of one half.
    net.partition(["2", "8", "9"], ["3", "6", "7"])
    for _ in range(10 * CFG.election_ticks):
        net.tick_all()
    assert net.leaders() == []
    net.heal()
    for _ in range(10 * CFG.election_ticks):
        net.tick_all()
        if net.leaders():
            break
    leader = net.leader()
    assert net[leader].role is Role.LEADER
    net.stabilize()
    # The new leader leaves the joint configuration by itself.
    assert not net[leader].conf.joint and net[leader].conf.voters == {"1", "2", "3", "8", "9"}


def test_a_leader_outside_c_new_leads_until_it_is_committed_then_steps_down() -> None:
    net = five()
    add_learners(net, "6")
    net["1"].propose_joint_change([ConfChange(PROMOTE, "6"), ConfChange(REMOVE, "1")])
    roles_while_joint = []
    while net.pump():
        roles_while_joint.append((net["1"].role, net["1"].conf.joint))
    # It led the joint configuration, and appended C_new itself.
    assert (Role.LEADER, True) in roles_while_joint
    conf = net["2"].conf
    assert not conf.joint and conf.voters == {"2", "3", "4", "5", "6"}
    assert net["1"].role is not Role.LEADER
    with pytest.raises(ProposalDropped):  # while removed it accepts no proposals anyway
        net["1"].propose_joint_change([ConfChange(REMOVE, "2")])
    for _ in range(10 * CFG.election_ticks):
        net.tick_all()
        if net.leaders():
            break
    assert net.leader() in {"2", "3", "4", "5", "6"}


def test_learner_only_changes_take_one_entry() -> None:
    net = five()
    net.add("6")
    net.add("7")
    before = net["1"].log.last_index()
    net["1"].propose_joint_change([ConfChange(ADD_LEARNER, "6"), ConfChange(ADD_LEARNER, "7")])
    net.stabilize()
    conf = net["1"].conf
    assert conf.learners == {"6", "7"} and not conf.joint
    assert net["1"].log.last_index() == net["1"].confs.last_index == before + 1


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ([], "at least one"),
        ([ConfChange(REMOVE, "2"), ConfChange(REMOVE, "2")], "named twice"),
        ([ConfChange(ADD_LEARNER, "2")], "remove it, then add it as a learner"),
        ([ConfChange(REMOVE, n) for n in ids(5)], "no voter"),
        ([ConfChange(PROMOTE, "9")], "not a learner"),
        ([ConfChange(REMOVE, "9")], "not a member"),
    ],
)
def test_invalid_joint_changes_are_refused(changes: list[ConfChange], why: str) -> None:
    net = five()
    with pytest.raises(ProposalDropped, match=why):
        net["1"].propose_joint_change(changes)
    assert not net["1"].conf.joint


def test_no_other_change_while_joint() -> None:
    conf = ConfState(voters=frozenset("abc"))
    joint = enter_joint(conf, [ConfChange(ADD_VOTER, "d"), ConfChange(REMOVE, "a")])
    assert joint.joint
    with pytest.raises(ProposalDropped, match="already joint"):
        enter_joint(joint, [ConfChange(REMOVE, "b")])
    with pytest.raises(ProposalDropped, match="joint"):
        apply_change(joint, ConfChange(REMOVE, "b"))
    left = leave_joint(joint)
    assert left.voters == {"b", "c", "d"} and not left.joint
    with pytest.raises(ProposalDropped, match="not joint"):
        leave_joint(left)


# ------------------------------------------------------------------------------ removals remembered


def test_removals_are_in_the_configuration_and_survive_a_snapshot() -> None:
    """A member restarted from a snapshot taken after a removal still knows who was removed
    and where (it used to be kept in the driver's memory only)."""
    net = five()
    net["1"].propose_conf_change(ConfChange(REMOVE, "5"))
    net.stabilize()
    index = net["1"].confs.last_index
    assert dict(net["1"].conf.removed) == {"5": index}
    net.propose("1", b"y")
    snap = net.compact("2", net["2"].log.applied)
    assert dict(snap.meta.conf.removed) == {"5": index}
    restarted = net.restart("2")
    assert dict(restarted.raft.conf.removed) == {"5": index}


def test_a_member_added_again_is_no_longer_listed_as_removed() -> None:
    net = five()
    net["1"].propose_conf_change(ConfChange(REMOVE, "5"))
    net.stabilize()
    net["1"].propose_conf_change(ConfChange(ADD_LEARNER, "5"))
    net.stabilize()
    assert net["1"].conf.removed == ()


# ------------------------------------------------------------------------------ encoding


def test_joint_entries_round_trip_and_old_entries_still_decode() -> None:
    conf = ConfState(voters=frozenset("ab"), learners=frozenset("c"), contexts=(("a", b"x"),))
    joint = enter_joint(conf, [ConfChange(ADD_VOTER, "d", b"y"), ConfChange(REMOVE, "a")])
    changes = [ConfChange(ADD_VOTER, "d", b"y"), ConfChange(REMOVE, "a")]
    data = encode_conf(changes, joint)
    assert decode_conf_changes(data) == (changes, joint)
    assert decode_conf(data) == (changes[0], joint)
    old = (
        b'{"change":{"context":"","node":"c","type":"add_learner"},'
        b'"contexts":{},"learners":["c"],"voters":["a"]}'
    )
    change, state = decode_conf(old)
    assert change == ConfChange(ADD_LEARNER, "c") and state.voters == {"a"} and not state.joint
    with pytest.raises(ProtocolError):
        decode_conf(b'{"voters":[],"learners":[],"contexts":{},"voters_outgoing":["a"]}')


# ------------------------------------------------------------------------------ quorum arithmetic

names = st.frozensets(st.sampled_from("abcdefg"), max_size=7)


@given(names, names, st.dictionaries(st.sampled_from("abcdefg"), st.integers(0, 9)))
def test_joint_quorum_index_is_the_largest_value_both_majorities_reached(
    voters: frozenset[str], outgoing: frozenset[str], acked: dict[str, int]
) -> None:
    def reached(group: frozenset[str], v: int) -> bool:
        return not group or sum(acked.get(n, 0) >= v for n in group) > len(group) // 2

    want = max((v for v in range(10) if reached(voters, v) and reached(outgoing, v)), default=0)
    if not voters:
        want = 0
    assert joint_quorum_index(voters, outgoing, acked) == want


@given(names, names, st.dictionaries(st.sampled_from("abcdefg"), st.booleans()))
def test_joint_vote_result_needs_both_halves(
    voters: frozenset[str], outgoing: frozenset[str], votes: dict[str, bool]
) -> None:
    def outcome(group: frozenset[str]) -> VoteResult:
        q = len(group) // 2 + 1
        yes = sum(votes.get(n) is True for n in group)
        no = sum(votes.get(n) is False for n in group)
        if yes >= q:
            return VoteResult.WON
        return VoteResult.LOST if len(group) - no < q else VoteResult.PENDING

    halves = [outcome(voters)] + ([outcome(outgoing)] if outgoing else [])
    want = (
        VoteResult.LOST
        if VoteResult.LOST in halves
        else VoteResult.WON
        if all(h is VoteResult.WON for h in halves)
        else VoteResult.PENDING
    )
    assert joint_vote_result(voters, outgoing, votes) == want


def test_every_split_of_five_into_two_halves() -> None:
    """Exhaustive small case: commit index over every ack pattern of a 3+3 joint config."""
    voters, outgoing = frozenset("abc"), frozenset("cde")
    for acks in itertools.product(range(3), repeat=5):
        acked = dict(zip("abcde", acks, strict=True))
        both = [
            v
            for v in range(3)
            if sum(acked[n] >= v for n in "abc") >= 2 and sum(acked[n] >= v for n in "cde") >= 2
        ]
        assert joint_quorum_index(voters, outgoing, acked) == max(both)
