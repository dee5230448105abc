"""``quick_init`` gives the KV messages a faster ``__init__`` that behaves as the dataclass one."""

from __future__ import annotations

import copy
import dataclasses
import inspect
import pickle

import pytest

from phalanx_aio.kv import messages as m
from phalanx_aio.kv._quick import quick_init

CLASSES = [getattr(m, name) for name in m.__all__ if dataclasses.is_dataclass(getattr(m, name))]


def test_every_message_class_has_the_quick_init() -> None:
    assert len(CLASSES) >= 10
    for cls in CLASSES:
        assert cls.__init__.__qualname__ == f"{cls.__qualname__}.__init__"
        assert cls.__init__.__code__.co_filename == "<string>", cls  # not the dataclass's own


def test_the_quick_init_keeps_parameters_defaults_and_frozenness() -> None:
    @dataclasses.dataclass(frozen=True, slots=True)
    class Plain:
        a: int
        b: bytes = b"x"
        c: str | None = None

    @quick_init
    @dataclasses.dataclass(frozen=True, slots=True)
    class Quick:
        a: int
        b: bytes = b"x"
        c: str | None = None

    assert str(inspect.signature(Quick)) == str(inspect.signature(Plain))
    for args, kwargs in [((1,), {}), ((1, b"y"), {"c": "z"}), ((), {"a": 2, "c": None})]:
        q, p = Quick(*args, **kwargs), Plain(*args, **kwargs)
        assert (q.a, q.b, q.c) == (p.a, p.b, p.c)
    with pytest.raises(TypeError):
        Quick()  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        Quick(1, b"", None, 4)  # type: ignore[call-arg]
    q = Quick(1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        q.a = 2  # type: ignore[misc]
    assert pickle.loads(
        pickle.dumps(m.PutRequest(m.RequestHeader("c", "s", 2, 1), b"k", b"v"))
    ) == m.PutRequest(m.RequestHeader("c", "s", 2, 1), b"k", b"v")
    assert copy.copy(m.PutResponse(previous=b"p")).previous == b"p"


def test_quick_init_refuses_what_it_cannot_copy() -> None:
    @dataclasses.dataclass(frozen=True, slots=True)
    class Factory:
        a: list[int] = dataclasses.field(default_factory=list)

    @dataclasses.dataclass(slots=True)
    class Mutable:
        a: int

    @dataclasses.dataclass(frozen=True, slots=True)
    class Post:
        a: int

        def __post_init__(self) -> None:
            pass

    for cls in (Factory, Mutable, Post):
        with pytest.raises(TypeError):
            quick_init(cls)
