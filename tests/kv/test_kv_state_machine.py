"""The KV state machine: operations, exactly-once sessions, expiry by log time, snapshots."""

from __future__ import annotations

from struct import error as struct_error

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phalanx_aio.errors import ProtocolError
from phalanx_aio.kv import KVCommand, KVOp, KVStateMachine, SessionExpired, decode_command, encode_command


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
