"""The default codec round-trips plain values exactly and deterministically, refuses what it
cannot represent, and never runs code named by its input; pickle needs an explicit opt-in."""

from __future__ import annotations

import dataclasses
import enum
import math
import os
import pickle
import subprocess
import sys
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phalanx_aio import LocalError, ProtocolError, ReplicatedState, UnsupportedValue, command
from phalanx_aio.commands import MAX_DEPTH, PickleCodec, SafeCodec


@dataclasses.dataclass(frozen=True)
class Point:
    x: int
    y: int


class Colour(enum.Enum):
    RED = "red"
    BLUE = 2


codec = SafeCodec(types=[Point, Colour])

hashable = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text() | st.binary(),
    lambda inner: st.tuples(inner, inner) | st.frozensets(inner, max_size=4),
    max_leaves=8,
)
values = st.recursive(
    hashable,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(hashable, inner, max_size=4)
        | st.sets(hashable, max_size=4)
        | st.builds(tuple, st.lists(inner, max_size=3))
    ),
    max_leaves=20,
)


def same(a: Any, b: Any) -> bool:
    """Equal, of the same types all the way down (1 == 1.0 == True would not do)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    return bool(a == b)


@settings(max_examples=150, deadline=None)
@given(values)
def test_every_supported_value_round_trips_exactly(value: Any) -> None:
    data = codec.encode(value)
    assert same(codec.decode(data), value)
    assert codec.encode(codec.decode(data)) == data  # a canonical form


@pytest.mark.parametrize(
    "value",
    [
        0, -1, 127, 128, -128, -129, 2**200, -(2**200),
        -0.0, math.inf, -math.inf, "\ud800 lone surrogate", b"\x00\xff",
        Point(1, -2), Colour.RED, Colour.BLUE, {"p": [Point(0, 0), {Colour.BLUE: (None, True)}]},
    ],
)  # fmt: skip
def test_edge_values_round_trip(value: Any) -> None:
    assert same(codec.decode(codec.encode(value)), value)


def test_nan_and_byte_like_values() -> None:
    assert math.isnan(codec.decode(codec.encode(math.nan)))
    assert codec.decode(codec.encode(bytearray(b"ab"))) == b"ab"
    assert codec.decode(codec.encode(memoryview(b"cd"))) == b"cd"


def test_sets_encode_the_same_whatever_the_hash_seed() -> None:
    script = (
        "from phalanx_aio.commands import SafeCodec;"
        "print(SafeCodec().encode({'alpha','beta','gamma','delta',('x',1),frozenset({'q','r'})}).hex())"
    )
    outs = {
        subprocess.run(
            [sys.executable, "-c", script],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in ("1", "2", "3")
    }
    assert len(outs) == 1


class Subclassed(int):
    pass


@dataclasses.dataclass
class Unregistered:
    a: int


@pytest.mark.parametrize(
    ("value", "match"),
    [
        (object(), "object"),
        ([1, {"k": 1.5j}], r"value\[1\]\['k'\] is a complex"),
        (Subclassed(3), "Subclassed"),
        (Unregistered(1), "register the class"),
        ({"a": {1, 2}, "b": lambda: 0}, "function"),
    ],
)
def test_unsupported_values_are_refused_with_their_place(value: Any, match: str) -> None:
    with pytest.raises(UnsupportedValue, match=match):
        SafeCodec(types=[Colour]).encode(value)


def test_nesting_is_bounded_both_ways() -> None:
    deep: list[Any] = []
    for _ in range(MAX_DEPTH + 1):
        deep = [deep]
    with pytest.raises(UnsupportedValue, match="levels"):
        codec.encode(deep)
    crafted = bytes([0x07, 1]) * (MAX_DEPTH + 5) + bytes([0x07, 0])
    with pytest.raises(ProtocolError, match="nest"):
        codec.decode(crafted)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xff",  # unknown tag
        b"\x05\x05ab",  # a length past the end
        b"\x07\xff\xff\xff\x7f",  # a count past the end
        b"\x00\x00",  # trailing bytes
        b"\x04\x00",  # a short float
        b"\x09\x01\x07\x00\x00",  # an unhashable key
        b"\x0c\x05\x05Point\x00",  # a class registered nowhere
        b"\x05\x02\xff\xfe",  # not UTF-8
    ],
)
def test_malformed_input_is_a_protocol_error(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        SafeCodec().decode(data)


class Boom:
    ran = False

    def __reduce__(self) -> tuple[Any, ...]:
        return (setattr, (Boom, "ran", True))


def test_the_default_codec_never_unpickles() -> None:
    payload = pickle.dumps(Boom())
    with pytest.raises(ProtocolError):
        SafeCodec().decode(payload)
    assert Boom.ran is False


def test_pickle_needs_an_explicit_opt_in() -> None:
    with pytest.raises(LocalError, match="trust_peers"):
        PickleCodec()
    trusted = PickleCodec(trust_peers=True)
    assert trusted.safe is False
    assert trusted.decode(trusted.encode({1: complex(1, 2)})) == {1: complex(1, 2)}


def test_an_object_with_the_default_codec_refuses_a_pickled_command() -> None:
    class Box(ReplicatedState):
        def __init__(self) -> None:
            self.v = 0

        @command
        def put(self, v: int) -> None:
            self.v = v

    box = Box()
    evil = box._rs_prefix() + pickle.dumps(["put", [Boom()], {}])
    with pytest.raises(ProtocolError):
        box.apply(evil)
    assert Boom.ran is False and box.v == 0


def test_registration_rules() -> None:
    with pytest.raises(LocalError, match="dataclasses and enums"):
        SafeCodec(types=[int])
    with pytest.raises(LocalError, match="twice"):
        SafeCodec(types={"P": Point, "Q": Point})
    renamed = SafeCodec(types={"geometry.Point": Point})
    data = renamed.encode(Point(1, 2))
    assert b"geometry.Point" in data
    with pytest.raises(ProtocolError, match="not registered"):
        codec.decode(data)
