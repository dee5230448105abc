"""The envelope a node wraps its commands in."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phalanx_aio import Entry, EntryType, MemoryStorage, RaftNode, StateMachine
from phalanx_aio.node import _envelope

ids = st.text(min_size=1, max_size=20).filter(lambda s: len(s.encode()) <= 255)


@given(ids, st.integers(0, 2**64 - 1), st.binary(max_size=40))
def test_wrap_then_unwrap_gives_back_origin_request_and_command(origin: str, req: int, cmd: bytes) -> None:
    data = _envelope.wrap(origin, req, cmd)
    assert data.startswith(_envelope.prefix(origin))
    assert _envelope.unwrap(data) == (origin, req, cmd)


def test_the_origin_names_the_node_and_its_run() -> None:
    a, b = _envelope.run_origin("n1", b"\x00" * 8), _envelope.run_origin("n1", b"\x01" * 8)
    assert a == "n1#" + "00" * 8 and a != b
    assert len(_envelope.run_origin("x" * _envelope.MAX_NODE_ID_BYTES, bytes(8)).encode()) == 255
    with pytest.raises(ValueError):
        _envelope.run_origin("n1", b"short")


def test_data_that_is_not_an_envelope_is_the_command_itself() -> None:
    bad_origin = bytes((1, 2)) + b"\xff\xfe" + bytes(8) + b"cmd"  # origin not UTF-8
    short = bytes((1, 5)) + b"ab" + bytes(8)  # announces a 5-byte origin it does not hold
    for data in (b"", b"incr 1", bytes((2, 1)) + b"a" + bytes(8), bad_origin, short):
        assert _envelope.unwrap(data) == (None, 0, data)


class Recorder(StateMachine):
    def __init__(self) -> None:
        self.commands: list[bytes] = []

    def apply(self, command: bytes) -> int:
        self.commands.append(command)
        return len(self.commands)

    def snapshot(self) -> bytes:
        return b""

    def restore(self, data: bytes) -> None:
        pass


THIS_RUN = _envelope.run_origin("me", b"run one.")
EARLIER_RUN = _envelope.run_origin("me", b"run two.")
payloads = st.one_of(
    st.tuples(
        # this run's, an earlier run's of the same node, an earlier release's, others'
        st.sampled_from([THIS_RUN, EARLIER_RUN, "me", "a", "bb", "ü"]),
        st.integers(1, 50),
        st.binary(max_size=8),
    ).map(lambda t: _envelope.wrap(*t)),
    st.binary(max_size=14),  # no envelope, or a truncated one
    st.sampled_from(["me", "a", "bb"]).map(lambda o: _envelope.prefix(o) + b"\x00\x01"),  # prefix, too short
)


@settings(max_examples=200, deadline=None)
@given(st.lists(payloads, max_size=30))
def test_a_node_applies_what_unwrap_finds_and_answers_only_its_own_callers(datas: list[bytes]) -> None:
    # The node recognises envelopes by remembered prefixes (its own, the last other origin's):
    # whatever the mix, the state machine gets exactly unwrap's command, in order, and each
    # of this run's waiting requests gets the result of its own entry, never the result of an
    # entry with the same request id from an earlier run (or release) of the same node.
    sm = Recorder()
    node = RaftNode("me", address="mem://me", peers={}, state_machine=sm, storage=MemoryStorage("me"))
    node._own = _envelope.prefix(THIS_RUN)
    loop = asyncio.new_event_loop()
    try:
        waiting = {}
        for data in datas:
            origin, req, _ = _envelope.unwrap(data)
            if origin == THIS_RUN and req not in waiting:
                waiting[req] = node._pending[req] = loop.create_future()
        others = {req: loop.create_future() for req in range(1, 51) if req not in waiting}
        node._pending.update(others)
        node._apply([Entry(1, i, EntryType.NORMAL, d) for i, d in enumerate(datas, 1)])
        assert sm.commands == [_envelope.unwrap(d)[2] for d in datas]
        for req, fut in waiting.items():
            first = next(i for i, d in enumerate(datas, 1) if _envelope.unwrap(d)[:2] == (THIS_RUN, req))
            assert fut.result() == first
        assert not any(fut.done() for fut in others.values())
    finally:
        loop.close()
