"""The aiosqlite internals a store relies on, each behind one function (private).

aiosqlite has no public way to run a function on a connection's worker thread, nor to make
that thread a daemon. ``tests/storage/test_aiosqlite_internals.py`` checks each function
against the installed aiosqlite and names it if a release changes what it relies on.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from typing import TypeVar, cast

import aiosqlite

__all__ = ["daemonize", "run_on_thread"]

_T = TypeVar("_T")


def run_on_thread(db: aiosqlite.Connection, fn: Callable[[], _T]) -> Awaitable[_T]:
    """Run ``fn`` on ``db``'s worker thread, queued behind its other calls (``_execute``)."""
    run = cast("Callable[[Callable[[], _T]], Awaitable[_T]]", db._execute)
    return run(fn)


def daemonize(db: aiosqlite.Connection) -> bool:
    """Make ``db``'s worker thread (not started yet) a daemon, so that a store never closed does
    not keep the interpreter alive at exit; ``False`` if this aiosqlite has no such thread."""
    thread = getattr(db, "_thread", None)
    if not isinstance(thread, threading.Thread):
        return False
    thread.daemon = True
    return True
