"""Shared checks for the storage tests."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def no_store_left_open() -> Iterator[None]:
    """Fail a test that leaves a store open: its aiosqlite thread would keep the process alive."""
    before = set(threading.enumerate())
    yield
    for thread in set(threading.enumerate()) - before:
        thread.join(timeout=10)  # a closed store's thread ends right after close() returns
        assert not thread.is_alive(), f"a store was left open (thread {thread.name} still running)"
