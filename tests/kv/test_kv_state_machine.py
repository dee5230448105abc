"""The KV state machine: operations, exactly-once sessions, expiry by log time, snapshots."""

from __future__ import annotations

from struct import error as struct_error

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phalanx_aio.errors import LocalError, ProtocolError
from phalanx_aio.kv import KVCommand, KVOp, KVStateMachine, SessionExpired, decode_command, encode_command
from phalanx_aio.kv.state_machine import RESULT_OVERHEAD, SESSION_OVERHEAD, SessionLimits


def run(sm: KVStateMachine, **kw: object) -> object:
    return sm.apply(encode_command(KVCommand(**kw)))  # type: ignore[arg-type]


def test_put_get_delete_cas() -> None:
    sm = KVStateMachine()
    assert run(sm, op=KVOp.PUT, key=b"a", value=b"1") is None  # PUT returns the previous value
    assert sm.get(b"a") == b"1"
    assert run(sm, op=KVOp.PUT, key=b"a", value=b"1") == b"1"
    # CAS returns the value found; it swapped exactly when that equals the expected value.
    assert run(sm, op=KVOp.CAS, key=b"a", value=b"2", expected=b"9") == b"1"
    assert sm.get(b"a") == b"1"
    assert run(sm, op=KVOp.CAS, key=b"a", value=b"2", expected=b"1") == b"1"
    assert sm.get(b"a") == b"2"
    assert run(sm, op=KVOp.CAS, key=b"b", value=b"x", expected=None) is None
    assert sm.get(b"b") == b"x"
    assert run(sm, op=KVOp.CAS, key=b"b", value=b"y", expected=None) == b"x"
    assert sm.get(b"b") == b"x"
    assert run(sm, op=KVOp.DELETE, key=b"a") is True
    assert run(sm, op=KVOp.DELETE, key=b"a") is False
    assert sm.get(b"a") is None


def test_retried_request_is_applied_once() -> None:
    sm = KVStateMachine()
    first = run(sm, op=KVOp.CAS, key=b"k", value=b"v", expected=None, client_id="c1", seq=1)
    again = run(sm, op=KVOp.CAS, key=b"k", value=b"v", expected=None, client_id="c1", seq=1)
    assert first is None and again is None  # without the session the retry would find b"v"
    assert run(sm, op=KVOp.PUT, key=b"n", value=b"1", client_id="c1", seq=2, acked=1) is None
    assert run(sm, op=KVOp.PUT, key=b"n", value=b"1", client_id="c1", seq=2, acked=1) is None
    with pytest.raises(SessionExpired):
        run(sm, op=KVOp.PUT, key=b"n", value=b"2", client_id="c1", seq=1, acked=1)
    assert sm.get(b"n") == b"1"


def test_sessions_expire_by_log_time_identically() -> None:
    a, b = KVStateMachine(session_ttl=2000), KVStateMachine(session_ttl=2000)
    for sm in (a, b):
        run(sm, op=KVOp.PUT, key=b"k", value=b"v", client_id="old", seq=1)
        for i in range(5000):
            run(sm, op=KVOp.PUT, key=b"x", value=b"%d" % i)
    assert "old" not in a.sessions and a.snapshot() == b.snapshot()
    with pytest.raises(SessionExpired):
        run(a, op=KVOp.PUT, key=b"k", value=b"w", client_id="old", seq=2, acked=1)
    assert a.get(b"k") == b"v"


def test_snapshot_round_trip_keeps_sessions() -> None:
    sm = KVStateMachine()
    run(sm, op=KVOp.PUT, key=b"a", value=b"1", client_id="c", seq=1)
    run(sm, op=KVOp.DELETE, key=b"zz", client_id="c", seq=2)
    copy = KVStateMachine()
    copy.restore(sm.snapshot())
    assert copy.data == sm.data and copy.applied == sm.applied
    assert copy.snapshot() == sm.snapshot()
    run(sm, op=KVOp.CAS, key=b"zz", value=b"", expected=None)  # now zz exists
    run(copy, op=KVOp.CAS, key=b"zz", value=b"", expected=None)
    assert run(copy, op=KVOp.DELETE, key=b"zz", client_id="c", seq=2) is False  # cached result


def test_snapshot_keeps_cached_previous_values() -> None:
    sm = KVStateMachine()
    run(sm, op=KVOp.PUT, key=b"a", value=b"old")
    assert run(sm, op=KVOp.PUT, key=b"a", value=b"new", client_id="c", seq=1) == b"old"
    assert run(sm, op=KVOp.CAS, key=b"a", value=b"x", expected=b"nope", client_id="c", seq=2) == b"new"
    run(sm, op=KVOp.PUT, key=b"a", value=b"newer")
    copy = KVStateMachine()
    copy.restore(sm.snapshot())
    assert copy.snapshot() == sm.snapshot()
    # Retries are answered from the restored memory, bytes results included.
    assert run(copy, op=KVOp.PUT, key=b"a", value=b"new", client_id="c", seq=1) == b"old"
    assert run(copy, op=KVOp.CAS, key=b"a", value=b"x", expected=b"nope", client_id="c", seq=2) == b"new"
    assert copy.get(b"a") == b"newer"


def format1_snapshot(sm: KVStateMachine) -> bytes:
    """``sm`` as the first snapshot format wrote it (each key and value length-prefixed)."""
    import struct

    out = [struct.pack(">QII", sm.applied, len(sm.data), 0)]
    for k in sorted(sm.data):
        out += [struct.pack(">I", len(k)), k, struct.pack(">I", len(sm.data[k])), sm.data[k]]
    return b"".join(out)


def test_snapshots_of_the_first_format_still_restore() -> None:
    sm = KVStateMachine()
    for i in range(50):
        run(sm, op=KVOp.PUT, key=b"k%d" % i, value=b"v" * i)
    copy = KVStateMachine()
    copy.restore(format1_snapshot(sm))
    assert copy.data == sm.data and copy.applied == sm.applied == 50
    assert copy.snapshot() == sm.snapshot()  # and it writes the current format


@pytest.mark.parametrize("cut", [10, 24, 30, -1])
def test_truncated_snapshot_is_refused(cut: int) -> None:
    sm = KVStateMachine()
    run(sm, op=KVOp.PUT, key=b"a", value=b"1")
    run(sm, op=KVOp.PUT, key=b"b", value=b"22")
    data = sm.snapshot()
    with pytest.raises((ProtocolError, ValueError, struct_error)):
        KVStateMachine().restore(data[:cut])


def test_snapshot_with_a_key_twice_is_refused() -> None:
    sm = KVStateMachine()
    run(sm, op=KVOp.PUT, key=b"a", value=b"1")
    run(sm, op=KVOp.PUT, key=b"b", value=b"2")
    data = bytearray(sm.snapshot())
    at = data.index(b"ab12")  # keys, then values: make the second key equal the first
    data[at + 1 : at + 2] = b"a"
    with pytest.raises(ProtocolError, match="twice"):
        KVStateMachine().restore(bytes(data))


def test_results_are_forgotten_exactly_up_to_the_acknowledged_number() -> None:
    # Results arrive out of order (concurrent requests of one session), and a copy restored
    # from a snapshot holds them in another order: both forget exactly the same ones.
    sm = KVStateMachine()
    for seq in (1, 3, 2, 6, 4):
        run(sm, op=KVOp.PUT, key=b"k%d" % seq, value=b"v", client_id="c", seq=seq)
    copy = KVStateMachine()
    copy.restore(sm.snapshot())
    for m in (sm, copy):
        run(m, op=KVOp.PUT, key=b"k5", value=b"v", client_id="c", seq=5, acked=3)
        assert sorted(m.sessions["c"].results) == [4, 5, 6]
        run(m, op=KVOp.PUT, key=b"k7", value=b"v", client_id="c", seq=7, acked=5)
        assert sorted(m.sessions["c"].results) == [6, 7]
    assert copy.snapshot() == sm.snapshot()
    with pytest.raises(SessionExpired):  # an acknowledged number is refused, not re-applied
        run(sm, op=KVOp.PUT, key=b"k2", value=b"w", client_id="c", seq=2, acked=5)


def test_evicted_results_are_not_applied_again() -> None:
    sm = KVStateMachine(max_results_per_session=2)
    for seq in (1, 2, 3):  # nothing acknowledged: the result of 1 is evicted
        run(sm, op=KVOp.PUT, key=b"k%d" % seq, value=b"v", client_id="c", seq=seq)
    run(sm, op=KVOp.DELETE, key=b"k1")
    with pytest.raises(SessionExpired):
        run(sm, op=KVOp.PUT, key=b"k1", value=b"v", client_id="c", seq=1)
    assert sm.get(b"k1") is None
    assert run(sm, op=KVOp.PUT, key=b"k3", value=b"w", client_id="c", seq=3) is None  # still cached


commands = st.builds(
    KVCommand,
    op=st.sampled_from(list(KVOp)),
    key=st.binary(max_size=40),
    value=st.binary(max_size=40),
    expected=st.none() | st.binary(max_size=10),
    client_id=st.text(max_size=10),
    seq=st.integers(0, 2**64 - 1),
    acked=st.integers(0, 2**64 - 1),
)


@settings(max_examples=300, derandomize=True, database=None)
@given(commands)
def test_command_round_trip(cmd: KVCommand) -> None:
    assert decode_command(encode_command(cmd)) == cmd


@settings(max_examples=500, derandomize=True, database=None)
@given(st.binary(max_size=80))
def test_garbage_is_a_protocol_error(data: bytes) -> None:
    """Random bytes either decode to a command that re-encodes identically or are refused."""
    try:
        cmd = decode_command(data)
    except ProtocolError:
        return
    assert encode_command(cmd) == data


# ---------------------------------------------------------------- session limits (issue 23)


def test_sessions_are_capped_by_count_least_recently_used_first() -> None:
    sm = KVStateMachine(limits=SessionLimits(max_sessions=3))
    for cid in ("a", "b", "c"):
        run(sm, op=KVOp.PUT, key=b"k", value=b"v", client_id=cid, seq=1)
    run(sm, op=KVOp.PUT, key=b"k", value=b"w", client_id="a", seq=2, acked=1)  # a is used again
    run(sm, op=KVOp.PUT, key=b"k", value=b"x", client_id="d", seq=1)  # evicts b, the least recent
    assert list(sm.sessions) == ["c", "a", "d"]
    # A late retry of b's first write is refused, naming the limit, instead of applying again
    # (b never acknowledged anything, so without the kept id it would look like a new session).
    with pytest.raises(SessionExpired, match=r"max_sessions \(3\)"):
        run(sm, op=KVOp.PUT, key=b"k", value=b"v", client_id="b", seq=1)
    assert sm.get(b"k") == b"x"
    assert sm.session_stats()["sessions"] == 3 and sm.session_stats()["forgotten_sessions"] == 1


def test_forgotten_ids_are_bounded_too() -> None:
    sm = KVStateMachine(limits=SessionLimits(max_sessions=2))
    for i in range(10):
        run(sm, op=KVOp.PUT, key=b"k", value=b"v", client_id=f"c{i}", seq=1)
    assert list(sm.sessions) == ["c8", "c9"] and list(sm.forgotten) == ["c6", "c7"]


def test_sessions_are_capped_by_bytes() -> None:
    big = b"x" * 10_000
    limits = SessionLimits(max_session_bytes=50_000, max_result_bytes_per_session=20_000)
    sm = KVStateMachine(limits=limits)
    run(sm, op=KVOp.PUT, key=b"k", value=big)
    for i in range(8):  # each remembers a previous value of 10,000 bytes
        run(sm, op=KVOp.PUT, key=b"k", value=big, client_id=f"c{i}", seq=1)
        assert sm.session_bytes <= limits.max_session_bytes
    assert list(sm.sessions) == ["c4", "c5", "c6", "c7"]  # the least recently used went first
    assert sm.session_bytes == sum(
        SESSION_OVERHEAD + len(cid) + RESULT_OVERHEAD + len(big) for cid in sm.sessions
    )
    with pytest.raises(SessionExpired, match=r"max_session_bytes \(50000\)"):
        run(sm, op=KVOp.PUT, key=b"k", value=big, client_id="c0", seq=1)


def test_one_session_cannot_pin_more_than_its_share() -> None:
    """A client that never acknowledges keeps at most ``max_result_bytes_per_session``."""
    sm = KVStateMachine(limits=SessionLimits(max_result_bytes_per_session=100_000))
    value = b"v" * 30_000
    run(sm, op=KVOp.PUT, key=b"k", value=value)
    for seq in range(1, 11):
        run(sm, op=KVOp.PUT, key=b"k", value=value, client_id="greedy", seq=seq)
    sess = sm.sessions["greedy"]
    assert sorted(sess.results) == [8, 9, 10] and sess.cost <= 100_000
    with pytest.raises(SessionExpired, match="forgotten"):  # not applied a second time
        run(sm, op=KVOp.PUT, key=b"k", value=b"again", client_id="greedy", seq=7)
    assert sm.get(b"k") == value
    # The newest result is kept even when it alone is over the limit.
    run(sm, op=KVOp.PUT, key=b"k", value=b"w" * 200_000, client_id="greedy", seq=11)
    run(sm, op=KVOp.PUT, key=b"k", value=b"z", client_id="greedy", seq=12)
    assert list(sess.results) == [12] and len(sess.results[12]) == 200_000  # type: ignore[arg-type]


def test_expiry_forgets_the_least_recently_used_and_remembers_why() -> None:
    sm = KVStateMachine(limits=SessionLimits(session_ttl=1500))
    run(sm, op=KVOp.PUT, key=b"k", value=b"v", client_id="idle", seq=1)
    run(sm, op=KVOp.PUT, key=b"k", value=b"v", client_id="busy", seq=1)
    for i in range(3000):
        run(sm, op=KVOp.PUT, key=b"x", value=b"", client_id="busy", seq=i + 2, acked=i + 1)
    assert list(sm.sessions) == ["busy"]
    with pytest.raises(SessionExpired, match="expired after 1500 applied commands"):
        run(sm, op=KVOp.PUT, key=b"k", value=b"w", client_id="idle", seq=1)


@pytest.mark.parametrize("cut_at", [0, 137, 611, 1499])
def test_session_limits_are_identical_on_every_member(cut_at: int) -> None:
    """A member restored from a snapshot at any point evicts and answers exactly like one that
    applied every command: the limits are part of the replicated state."""
    import random

    rng = random.Random(cut_at)
    limits = SessionLimits(
        max_sessions=12,
        max_session_bytes=6000,
        max_results_per_session=5,
        max_result_bytes_per_session=1500,
        session_ttl=400,
    )
    seqs: dict[str, int] = {}
    commands = []
    for _ in range(1500):
        cid = f"c{rng.randrange(30)}"
        seqs[cid] = seqs.get(cid, 0) + rng.choice((0, 1, 1, 1))  # sometimes a retry
        seq = max(seqs[cid], 1)
        acked = max(0, seq - rng.randrange(1, 8))
        value = b"v" * rng.randrange(0, 400)
        key = b"k%d" % rng.randrange(5)
        commands.append(encode_command(KVCommand(KVOp.PUT, key, value, None, cid, seq, acked)))

    def outcome(sm: KVStateMachine, cmd: bytes) -> object:
        try:
            return sm.apply(cmd)
        except SessionExpired as exc:
            return str(exc)

    a = KVStateMachine(limits=limits)
    b = KVStateMachine(limits=limits)
    for i, cmd in enumerate(commands):
        if i == cut_at:
            b = KVStateMachine(limits=limits)
            b.restore(a.snapshot())
        want = outcome(a, cmd)
        if i >= cut_at:
            assert outcome(b, cmd) == want, i
    assert a.snapshot() == b.snapshot()
    assert list(a.sessions) == list(b.sessions) and a.session_bytes == b.session_bytes
    assert a.session_stats()["sessions_evicted"] > 0 and a.forgotten


def test_a_snapshot_without_forgotten_ids_restores() -> None:
    """Snapshots written before forgotten ids were kept (nothing after the sessions)."""
    sm = KVStateMachine()
    run(sm, op=KVOp.PUT, key=b"k", value=b"v", client_id="c", seq=1)
    copy = KVStateMachine()
    copy.restore(sm.snapshot())
    assert not sm.forgotten and copy.snapshot() == sm.snapshot()
    assert copy.session_bytes == sm.session_bytes > 0


def test_bad_session_limits_are_refused() -> None:
    with pytest.raises(LocalError, match="max_sessions"):
        SessionLimits(max_sessions=0)


def test_snapshot_of_many_keys_in_steps_is_the_sorted_encoding() -> None:
    """The encoder works in steps (so that a worker thread hands the GIL back to the loop);
    with more keys than a step, inserted in random order, it writes what one pass over the
    sorted keys would, and restore reads it back."""
    import random

    from phalanx_aio.kv import _snapshot_format as kvsnap
    from phalanx_aio.kv import state_machine as kvsm

    rng = random.Random(17)
    n = 2 * kvsnap._ENCODE_STEP + 123
    keys = [b"k%06d" % i + rng.randbytes(rng.randrange(3)) for i in range(n)]
    rng.shuffle(keys)
    data = {k: rng.randbytes(rng.randrange(5)) for k in keys}
    ks = sorted(data)
    vs = [data[k] for k in ks]
    expected = b"".join(
        (kvsnap._u32_column(map(len, ks)), kvsnap._u32_column(map(len, vs)), b"".join(ks), b"".join(vs))
    )
    assert kvsnap._encode_items(data) == expected
    sm = kvsm.KVStateMachine()
    sm.data = data
    again = kvsm.KVStateMachine()
    again.restore(sm.snapshot())
    assert again.data == data and list(again.data) == ks


def test_each_state_machine_owns_its_cache_of_client_ids() -> None:
    """The decoded client ids are cached per state machine, not in a module global that every
    node of a process would share (issue 20)."""
    from phalanx_aio.kv import _command

    module_dicts = [n for n, v in vars(_command).items() if isinstance(v, dict) and not n.startswith("__")]
    assert not [n for n in module_dicts if not n.isupper()], module_dicts
    a, b = KVStateMachine(), KVStateMachine()
    a.apply(encode_command(KVCommand(KVOp.PUT, b"k", b"v", None, "client-a", 1, 0)))
    assert list(a._client_ids.values()) == ["client-a"]
    assert b._client_ids == {}
