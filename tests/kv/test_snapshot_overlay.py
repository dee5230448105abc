"""``KVStateMachine.snapshot_later`` freezes the dictionary instead of copying it: writes made
while the worker encodes go to an overlay, folded back afterwards. The snapshot is still the
state at the moment it was asked for, and the live state is never wrong meanwhile."""

from __future__ import annotations

import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phalanx_aio.errors import ProtocolError
from phalanx_aio.kv import KVCommand, KVOp, KVStateMachine, encode_command

KEYS = [b"a", b"b", b"c", b"d", b"e"]

ops = st.lists(
    st.tuples(
        st.sampled_from([KVOp.PUT, KVOp.DELETE, KVOp.CAS]),
        st.sampled_from(KEYS),
        st.sampled_from([b"1", b"22", b"333"]),
        st.sampled_from([None, b"1", b"22"]),
    ),
    max_size=30,
)


def _cmd(op: KVOp, key: bytes, value: bytes, expected: bytes | None) -> bytes:
    if op is KVOp.DELETE:
        value, expected = b"", None
    return encode_command(KVCommand(op=op, key=key, value=value, expected=expected))


def _assert_same(sm: KVStateMachine, ref: KVStateMachine) -> None:
    """Everything a reader can see is the reference's (a plain dictionary all along)."""
    assert dict(sm.data) == ref.data and len(sm.data) == len(ref.data)
    assert sorted(sm.data) == sorted(ref.data)
    assert all(sm.get(k) == ref.get(k) and (k in sm.data) == (k in ref.data) for k in KEYS)
    assert sm.data_bytes == ref.data_bytes


@settings(max_examples=300, deadline=None)
@given(before=ops, during=ops, after=ops, fold_by_read=st.booleans())
def test_overlay_is_invisible(
    before: list[tuple[KVOp, bytes, bytes, bytes | None]],
    during: list[tuple[KVOp, bytes, bytes, bytes | None]],
    after: list[tuple[KVOp, bytes, bytes, bytes | None]],
    fold_by_read: bool,
) -> None:
    sm, ref = KVStateMachine(), KVStateMachine()
    for op in before:
        assert sm.apply(_cmd(*op)) == ref.apply(_cmd(*op))
    expected = ref.snapshot()
    build = sm.snapshot_later()
    for op in during:
        assert sm.apply(_cmd(*op)) == ref.apply(_cmd(*op))
        _assert_same(sm, ref)
    assert build() == expected  # the state when it was asked for, not now
    if fold_by_read:
        _assert_same(sm, ref)  # reading after the build folds the overlay back in
    for op in after:
        assert sm.apply(_cmd(*op)) == ref.apply(_cmd(*op))
    _assert_same(sm, ref)
    assert sm.snapshot() == ref.snapshot()
    copy = KVStateMachine()
    copy.restore(sm.snapshot())
    _assert_same(copy, ref)


def test_the_dictionary_is_frozen_not_copied() -> None:
    """No copy on the loop: the worker reads the very dictionary, which no write touches."""
    sm = KVStateMachine()
    for i in range(1000):
        sm.apply(_cmd(KVOp.PUT, b"k%d" % i, b"v", None))
    frozen = sm._data
    build = sm.snapshot_later()
    assert sm._data is frozen  # not replaced by a copy
    sm.apply(_cmd(KVOp.PUT, b"k1", b"new", None))
    sm.apply(_cmd(KVOp.DELETE, b"k2", b"", None))
    assert frozen[b"k1"] == b"v" and b"k2" in frozen  # the worker's view is intact
    assert sm.get(b"k1") == b"new" and sm.get(b"k2") is None
    build()
    sm.apply(_cmd(KVOp.PUT, b"k3", b"x", None))  # the first write after the build folds
    assert sm._delta is None and sm._data is frozen and frozen[b"k1"] == b"new" and b"k2" not in frozen


def test_a_worker_thread_encodes_while_the_loop_applies() -> None:
    """The build runs in another thread, as the node runs it, while writes go on."""
    sm, ref = KVStateMachine(), KVStateMachine()
    for i in range(100_000):
        cmd = _cmd(KVOp.PUT, b"key%06d" % i, b"v%d" % i, None)
        sm.apply(cmd)
        ref.apply(cmd)
    expected = ref.snapshot()
    build = sm.snapshot_later()
    out: list[bytes] = []
    worker = threading.Thread(target=lambda: out.append(build()))
    worker.start()
    i = 0
    while worker.is_alive() or i < 2000:
        cmd = _cmd(KVOp.DELETE if i % 3 == 0 else KVOp.PUT, b"key%06d" % (i * 7 % 120_000), b"w", None)
        assert sm.apply(cmd) == ref.apply(cmd)
        i += 1
    worker.join()
    assert out == [expected]
    _assert_same(sm, ref)
    assert sm.snapshot() == ref.snapshot()


def test_a_restore_during_a_build_leaves_the_build_its_dictionary() -> None:
    sm, other = KVStateMachine(), KVStateMachine()
    sm.apply(_cmd(KVOp.PUT, b"a", b"1", None))
    other.apply(_cmd(KVOp.PUT, b"b", b"2", None))
    expected = sm.snapshot()
    build = sm.snapshot_later()
    sm.restore(other.snapshot())
    sm.apply(_cmd(KVOp.PUT, b"c", b"3", None))
    assert build() == expected
    sm.apply(_cmd(KVOp.PUT, b"d", b"4", None))
    assert dict(sm.data) == {b"b": b"2", b"c": b"3", b"d": b"4"}


def test_a_second_snapshot_while_a_build_runs_is_correct() -> None:
    """The node builds one at a time, but a direct caller (a backup) may ask meanwhile."""
    sm, ref = KVStateMachine(), KVStateMachine()
    for cmd in (_cmd(KVOp.PUT, b"a", b"1", None), _cmd(KVOp.PUT, b"b", b"2", None)):
        sm.apply(cmd)
        ref.apply(cmd)
    first = sm.snapshot_later()
    for cmd in (_cmd(KVOp.DELETE, b"a", b"", None), _cmd(KVOp.PUT, b"c", b"3", None)):
        sm.apply(cmd)
        ref.apply(cmd)
    assert sm.snapshot() == ref.snapshot()
    first()
    _assert_same(sm, ref)


def test_restore_later_decodes_apart_and_installs_the_same_state() -> None:
    sm = KVStateMachine()
    for i in range(40_000):  # more than one run of the stepped decoder
        sm.apply(_cmd(KVOp.PUT, b"k%d" % i, b"v" * (i % 7), None))
    sm.apply(encode_command(KVCommand(KVOp.PUT, b"s", b"1", client_id="c", seq=1)))
    data = sm.snapshot()
    target = KVStateMachine()
    target.apply(_cmd(KVOp.PUT, b"old", b"x", None))
    install = target.restore_later(data)()
    assert target.get(b"old") == b"x"  # decoding touched nothing live
    install()
    ref = KVStateMachine()
    ref.restore(data)
    _assert_same(target, ref)
    assert target.snapshot() == ref.snapshot() == data
    assert target.data_bytes == sm.data_bytes and target.session_bytes == sm.session_bytes


def test_restore_later_refuses_a_bad_snapshot_before_touching_the_state() -> None:
    sm = KVStateMachine()
    for i in range(100):
        sm.apply(_cmd(KVOp.PUT, b"k%d" % i, b"v", None))
    target = KVStateMachine()
    target.apply(_cmd(KVOp.PUT, b"keep", b"1", None))
    with pytest.raises(ProtocolError):
        target.restore_later(sm.snapshot()[:-300])()
    assert dict(target.data) == {b"keep": b"1"}
