"""The aiosqlite internals of :mod:`phalanx_aio.storage._aiosqlite`, one test per function: if an
aiosqlite release changes what a function relies on, its test fails here and names it."""

from __future__ import annotations

import sqlite3
import threading

import aiosqlite
import pytest

from phalanx_aio.storage._aiosqlite import daemonize, run_on_thread

AIOSQLITE = f"aiosqlite {getattr(aiosqlite, '__version__', '?')}"


async def test_run_on_thread_runs_on_the_connection_thread_in_order() -> None:
    db = aiosqlite.Connection(lambda: sqlite3.connect(":memory:"), 64)
    await db
    try:
        seen: list[str] = []

        def first() -> str:
            seen.append("first")
            return threading.current_thread().name

        name = await run_on_thread(db, first)
        assert name != threading.current_thread().name, f"{AIOSQLITE}: _execute ran on the caller's thread"
        await db.execute("SELECT 1")
        assert await run_on_thread(db, lambda: [*seen, "second"]) == ["first", "second"]
        with pytest.raises(ZeroDivisionError):
            await run_on_thread(db, lambda: 1 // 0)
    finally:
        await db.close()


async def test_daemonize_makes_the_worker_a_daemon() -> None:
    db = aiosqlite.Connection(lambda: sqlite3.connect(":memory:"), 64)
    assert daemonize(db), f"{AIOSQLITE}: Connection has no _thread any more"
    await db
    try:
        thread = db._thread
        assert thread.daemon and thread.is_alive()
    finally:
        await db.close()
