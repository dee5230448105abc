"""The envelope a node wraps its commands in: the fast paths agree with ``unwrap``."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from phalanx_aio.node import _envelope

ids = st.text(min_size=1, max_size=20).filter(lambda s: len(s.encode()) <= 255)


@given(ids, st.integers(0, 2**64 - 1), st.binary(max_size=40))
def test_wrap_then_unwrap_gives_back_origin_request_and_command(origin: str, req: int, cmd: bytes) -> None:
    data = _envelope.wrap(origin, req, cmd)
    assert data.startswith(_envelope.prefix(origin))
    assert _envelope.unwrap(data) == (origin, req, cmd)
    assert _envelope.command(data) == cmd


@given(st.binary(max_size=40))
def test_command_agrees_with_unwrap_on_any_bytes(data: bytes) -> None:
    # Anything that is no envelope (too short, another version, a bad origin) is a command.
    assert _envelope.command(data) == _envelope.unwrap(data)[2]


def test_data_that_is_not_an_envelope_is_the_command_itself() -> None:
    bad_origin = bytes((1, 2)) + b"\xff\xfe" + bytes(8) + b"cmd"  # origin not UTF-8
    short = bytes((1, 5)) + b"ab" + bytes(8)  # announces a 5-byte origin it does not hold
    for data in (b"", b"incr 1", bytes((2, 1)) + b"a" + bytes(8), bad_origin, short):
        assert _envelope.unwrap(data) == (None, 0, data)
        assert _envelope.command(data) == data
