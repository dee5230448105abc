"""Property tests of the core's pure parts against plain oracles (hypothesis).

* quorum arithmetic against brute force;
* RaftLog against a plain list of terms (a rule-based state machine);
* ConfHistory against a list of (index, configuration);
* membership changes: apply_change against a set-based oracle, encode/decode round trips.
"""

from __future__ import annotations

import contextlib
import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from phalanx_aio.core import ConfChange, ConfChangeType, ConfState, Entry, EntryType
from phalanx_aio.core.log import RaftLog
from phalanx_aio.core.membership import ConfHistory, apply_change, decode_conf, encode_conf
from phalanx_aio.core.quorum import VoteResult, quorum_index, quorum_size, vote_result
from phalanx_aio.errors import LocalError, ProposalDropped, ProtocolError

NODES = [f"n{i}" for i in range(8)]
node_ids = st.sampled_from(NODES)
voter_sets = st.frozensets(node_ids, max_size=7)

# --------------------------------------------------------------------------------- quorum


def oracle_quorum_index(voters: frozenset[str], acked: dict[str, int]) -> int:
    """The largest value v such that a majority of voters acknowledged at least v."""
    if not voters:
        return 0
    need = len(voters) // 2 + 1
    candidates = {0, *(acked.get(v, 0) for v in voters)}
    return max(v for v in candidates if sum(acked.get(x, 0) >= v for x in voters) >= need)


@given(voter_sets, st.dictionaries(node_ids, st.integers(0, 20)))
def test_quorum_index_matches_brute_force(voters: frozenset[str], acked: dict[str, int]) -> None:
    assert quorum_index(voters, acked) == oracle_quorum_index(voters, acked)


@given(voter_sets)
def test_quorum_size_is_a_strict_majority(voters: frozenset[str]) -> None:
    q = quorum_size(voters)
    assert 2 * q > len(voters) and 2 * (q - 1) <= len(voters)


def oracle_vote_result(voters: frozenset[str], votes: dict[str, bool]) -> VoteResult:
    """Enumerate every way the missing voters could still answer."""
    missing = sorted(v for v in voters if v not in votes)
    wins = set()
    for answers in itertools.product([True, False], repeat=len(missing)):
        full = {v: votes[v] for v in voters if v in votes} | dict(zip(missing, answers, strict=True))
        wins.add(2 * sum(full.values()) > len(voters))
    if wins == {True}:
        return VoteResult.WON
    if wins == {False}:
        return VoteResult.LOST
    return VoteResult.PENDING


@given(voter_sets.filter(bool), st.dictionaries(node_ids, st.booleans()))
def test_vote_result_matches_brute_force(voters: frozenset[str], votes: dict[str, bool]) -> None:
    assert vote_result(voters, votes) is oracle_vote_result(voters, votes)


# -------------------------------------------------------------------------------- RaftLog


def payload() -> st.SearchStrategy[bytes]:
    return st.binary(max_size=40)


class LogMachine(RuleBasedStateMachine):
    """RaftLog against an oracle: ``terms[i]`` and ``datas[i]`` describe index ``i``;
    indexes up to ``snap`` are compacted (``terms[snap]`` is the snapshot term)."""

    def __init__(self) -> None:
        super().__init__()
        self.log = RaftLog()
        self.terms: list[int] = [0]
        self.datas: list[bytes] = [b""]
        self.snap = 0
        self.committed = 0
        self.applied = 0
        self.stable = 0  # oracle of the persisted prefix

    # -- helpers

    def last(self) -> int:
        return len(self.terms) - 1

    def entries_from(self, first: int, terms: list[int], datas: list[bytes]) -> list[Entry]:
        return [
            Entry(t, first + k, EntryType.NORMAL, d)
            for k, (t, d) in enumerate(zip(terms, datas, strict=True))
        ]

    # -- changes

    @rule(n=st.integers(1, 5), bump=st.integers(0, 2), data=st.data())
    def append(self, n: int, bump: int, data: st.DataObject) -> None:
        term = self.terms[-1] + bump
        datas = [data.draw(payload()) for _ in range(n)]
        self.log.append(self.entries_from(self.last() + 1, [term] * n, datas))
        self.terms += [term] * n
        self.datas += datas

    @precondition(lambda self: self.last() > self.committed)
    @rule(data=st.data())
    def truncate_and_append(self, data: st.DataObject) -> None:
        first = data.draw(st.integers(self.committed + 1, self.last() + 1))
        base = self.terms[first - 1]
        n = data.draw(st.integers(1, 4))
        terms = sorted(data.draw(st.lists(st.integers(base, base + 3), min_size=n, max_size=n)))
        datas = [data.draw(payload()) for _ in range(n)]
        self.log.truncate_and_append(self.entries_from(first, terms, datas))
        self.terms = self.terms[:first] + terms
        self.datas = self.datas[:first] + datas
        self.stable = min(self.stable, first - 1)

    @rule(data=st.data())
    def commit(self, data: st.DataObject) -> None:
        to = data.draw(st.integers(0, self.last()))
        moved = self.log.commit_to(to)
        assert moved == (to > self.committed)
        self.committed = max(self.committed, to)

    @rule(data=st.data())
    def apply(self, data: st.DataObject) -> None:
        # As in the core, only persisted committed entries are applied.
        lo = max(self.applied, self.snap)
        hi = min(self.committed, max(self.stable, self.snap))
        if hi > lo:
            self.applied = data.draw(st.integers(lo, hi))
            self.log.applied = self.applied

    @rule()
    def persist(self) -> None:
        unstable = self.log.unstable_entries()
        assert [e.index for e in unstable] == list(range(self.stable + 1, self.last() + 1))
        if unstable:
            self.log.stable_to(unstable[-1].index, unstable[-1].term)
            self.stable = self.last()

    @rule(index=st.integers(0, 60), term=st.integers(0, 12))
    def stale_persist_is_ignored(self, index: int, term: int) -> None:
        before = self.log.unstable
        self.log.stable_to(index, term)
        matches = self.snap <= index <= self.last() and self.terms[index] == term
        if matches and index >= before:
            self.stable = index
        else:
            assert self.log.unstable == before

    @precondition(lambda self: self.applied > self.snap)
    @rule(data=st.data())
    def compact(self, data: st.DataObject) -> None:
        to = data.draw(st.integers(self.snap, self.applied))
        self.log.compact_to(to)
        self.snap = to

    # -- queries against the oracle

    @invariant()
    def marks(self) -> None:
        log = self.log
        assert log.first_index() == self.snap + 1
        assert log.last_index() == self.last()
        assert log.last_term() == self.terms[-1]
        assert log.snap_index == self.snap and log.snap_term == self.terms[self.snap]
        assert log.committed == self.committed
        assert log.unstable == max(self.stable, self.snap) + 1

    @invariant()
    def terms_and_entries(self) -> None:
        log = self.log
        for i in range(0, self.last() + 3):
            expect = self.terms[i] if self.snap <= i <= self.last() else None
            assert log.term(i) == expect
        for i in range(self.snap + 1, self.last() + 1):
            assert log.entry(i) == Entry(self.terms[i], i, EntryType.NORMAL, self.datas[i])

    @rule(data=st.data())
    def check_slice(self, data: st.DataObject) -> None:
        if self.last() <= self.snap:
            return
        lo = data.draw(st.integers(self.snap + 1, self.last()))
        hi = data.draw(st.integers(lo + 1, self.last() + 1))
        sizes = list(itertools.accumulate(len(self.datas[i]) + 16 for i in range(lo, hi)))
        edges = sorted({max(1, c + d) for c in sizes for d in (-1, 0, 1)})
        max_bytes = data.draw(st.one_of(st.sampled_from(edges), st.integers(1, 200)))
        max_count = data.draw(st.integers(1, 10))
        got = self.log.slice(lo, hi, max_bytes, max_count)
        # Oracle: the longest prefix of [lo, hi) within both limits, but at least one entry.
        want: list[int] = []
        size = 0
        for i in range(lo, hi):
            size += len(self.datas[i]) + 16
            if want and (size > max_bytes or len(want) >= max_count):
                break
            want.append(i)
        assert [e.index for e in got] == want

    @rule(data=st.data())
    def check_find_conflict(self, data: st.DataObject) -> None:
        if self.last() <= self.committed:
            return
        first = data.draw(st.integers(max(self.snap, self.committed) + 1, self.last() + 1))
        n = data.draw(st.integers(0, 5))
        terms = [data.draw(st.integers(0, 12)) for _ in range(n)]
        ents = [Entry(t, first + k) for k, t in enumerate(terms)]
        want = next(
            (k for k, e in enumerate(ents) if e.index > self.last() or self.terms[e.index] != e.term),
            len(ents),
        )
        assert self.log.find_conflict(ents) == want

    @rule(index=st.integers(0, 60), term=st.integers(0, 12))
    def check_find_conflict_by_term(self, index: int, term: int) -> None:
        top = min(index, self.last())
        if top < self.snap:
            want = top
        else:
            want = max(i for i in range(self.snap, top + 1) if i == self.snap or self.terms[i] <= term)
        assert self.log.find_conflict_by_term(index, term) == want

    @rule(last_index=st.integers(0, 60), last_term=st.integers(0, 12))
    def check_up_to_date(self, last_index: int, last_term: int) -> None:
        mine = (self.terms[-1], self.last())
        assert self.log.is_up_to_date(last_index, last_term) == ((last_term, last_index) >= mine)

    @invariant()
    def next_committed(self) -> None:
        got = self.log.next_committed(1 << 30)
        lo = max(self.applied, self.snap) + 1
        assert [e.index for e in got] == list(range(lo, self.committed + 1))
        one = self.log.next_committed(1)  # the byte limit still lets one entry through
        assert [e.index for e in one] == list(range(lo, min(lo, self.committed) + 1))


TestRaftLog = LogMachine.TestCase
TestRaftLog.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)


def test_log_rejects_a_gap() -> None:
    with pytest.raises(LocalError, match="contiguous"):
        RaftLog(5, 1, [Entry(1, 7)])


# ---------------------------------------------------------------------------- ConfHistory


def confs() -> st.SearchStrategy[ConfState]:
    return st.builds(lambda v, extra: ConfState(voters=v, learners=extra - v), voter_sets, voter_sets)


class ConfHistoryMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.base = (3, ConfState(voters=frozenset({"n0"})))
        self.hist = ConfHistory(*self.base)
        self.items: list[tuple[int, ConfState]] = [self.base]
        self.floor = self.base[0]  # at(i) is only meaningful from the base index on

    @rule(gap=st.integers(1, 4), conf=confs())
    def append(self, gap: int, conf: ConfState) -> None:
        index = self.items[-1][0] + gap
        self.hist.append(index, conf)
        self.items.append((index, conf))

    @rule(index=st.integers(0, 60))
    def truncate(self, index: int) -> None:
        self.hist.truncate_from(index)
        self.items = [self.items[0]] + [(i, c) for i, c in self.items[1:] if i < index]

    @rule(data=st.data())
    def compact(self, data: st.DataObject) -> None:
        index = data.draw(st.integers(self.floor, self.items[-1][0] + 5))
        base = self.oracle_at(index)
        self.hist.compact_to(index)
        self.items = [(index, base)] + [(i, c) for i, c in self.items if i > index]
        self.floor = index

    def oracle_at(self, index: int) -> ConfState:
        return [c for i, c in self.items if i <= index][-1] if index >= self.items[0][0] else self.items[0][1]

    @invariant()
    def agrees(self) -> None:
        assert self.hist.current == self.items[-1][1]
        assert self.hist.last_index == self.items[-1][0]
        for i in range(self.floor, self.items[-1][0] + 3):
            assert self.hist.at(i) == self.oracle_at(i)


TestConfHistory = ConfHistoryMachine.TestCase
TestConfHistory.settings = settings(max_examples=100, stateful_step_count=30, deadline=None)


# ----------------------------------------------------------------------------- membership

changes = st.builds(
    ConfChange,
    st.sampled_from(list(ConfChangeType)),
    st.one_of(node_ids, st.just("")),
    st.binary(max_size=6),
)


def oracle_apply(conf: ConfState, ch: ConfChange) -> ConfState | None:
    """The set-based definition of a single-server change; None if it must be refused."""
    voters, learners = set(conf.voters), set(conf.learners)
    ctx = dict(conf.contexts)
    nid = ch.node_id
    if not nid:
        return None
    if ch.type is ConfChangeType.ADD_LEARNER:
        if nid in voters | learners:
            return None
        learners.add(nid)
        ctx[nid] = ch.context
    elif ch.type in (ConfChangeType.ADD_VOTER, ConfChangeType.PROMOTE):
        if nid in voters or (ch.type is ConfChangeType.PROMOTE and nid not in learners):
            return None
        learners.discard(nid)
        voters.add(nid)
        if ch.context or nid not in ctx:
            ctx[nid] = ch.context
    else:
        if nid not in voters | learners or voters == {nid}:
            return None
        voters.discard(nid)
        learners.discard(nid)
        ctx.pop(nid, None)
    return ConfState(frozenset(voters), frozenset(learners), tuple(sorted(ctx.items())))


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(changes, max_size=25))
def test_apply_change_matches_the_set_oracle_and_round_trips(seq: list[ConfChange]) -> None:
    conf = ConfState(voters=frozenset({"n0"}), contexts=(("n0", b"a0"),))
    for ch in seq:
        want = oracle_apply(conf, ch)
        if want is None:
            with pytest.raises(ProposalDropped):
                apply_change(conf, ch)
            continue
        got = apply_change(conf, ch)
        assert got == want
        assert not (got.voters & got.learners)
        assert {k for k, _ in got.contexts} <= got.members()
        assert got.voters  # never empty
        assert decode_conf(encode_conf(ch, got)) == (ch, got)
        assert decode_conf(encode_conf(None, got)) == (None, got)
        conf = got


@given(st.binary(max_size=200))
def test_decode_conf_raises_only_protocol_error_on_garbage(data: bytes) -> None:
    # Anything else (KeyError, UnicodeDecodeError, ...) would fail the test.
    with contextlib.suppress(ProtocolError):
        decode_conf(data)


@given(
    st.sampled_from(
        [
            b"{}",
            b"[]",
            b'{"voters":["a"],"learners":["a"],"contexts":{}}',
            b'{"voters":["a"],"learners":[],"contexts":{"a":"zz"}}',
            b'{"voters":["a"],"learners":[],"contexts":{},"change":{"type":"nope","node":"a","context":""}}',
            b'{"voters":1,"learners":[],"contexts":{}}',
            b'{"voters":["a"],"learners":[],"contexts":[]}',
        ]
    )
)
def test_decode_conf_refuses_malformed_documents(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_conf(data)
