"""The storage package's public names exist, are documented, and follow the interface."""

from __future__ import annotations

import inspect

import phalanx_aio.storage as storage
from phalanx_aio.storage import MemoryStorage, SQLiteStorage, Storage


def test_public_names_are_documented() -> None:
    assert sorted(storage.__all__) == ["MemoryStorage", "SQLiteStorage", "Storage", "StoredState"]
    assert inspect.getdoc(storage)
    for name in storage.__all__:
        cls = getattr(storage, name)
        assert inspect.getdoc(cls), name
        for attr, member in vars(cls).items():
            if attr.startswith("_") and attr not in ("__aenter__", "__aexit__"):
                continue
            if callable(member) or isinstance(member, property):
                assert inspect.getdoc(member), f"{name}.{attr} has no docstring"


def test_both_stores_implement_the_interface() -> None:
    for cls in (MemoryStorage, SQLiteStorage):
        assert issubclass(cls, Storage)
        assert not inspect.isabstract(cls)
        for name in ("open", "save", "save_snapshot", "read_snapshot", "aclose"):
            assert inspect.iscoroutinefunction(getattr(cls, name)), f"{cls.__name__}.{name}"
            own = inspect.signature(getattr(cls, name))
            assert own == inspect.signature(getattr(Storage, name)), f"{cls.__name__}.{name}"
