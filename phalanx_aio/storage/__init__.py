"""Durable storage: everything a node must remember across a crash.

A :class:`Storage` keeps a node's identity (node and cluster id), its hard state (term, vote,
commit), its log entries and its last snapshot (with the configuration at its index). The
driver loads everything once with :meth:`Storage.open`, persists each ``Ready`` with one
:meth:`Storage.save`, compacts with :meth:`Storage.save_snapshot` and reads the snapshot back
with :meth:`Storage.read_snapshot` to send it to a follower. The core keeps the live log in
memory and never awaits storage.

Two implementations share one contract: :class:`MemoryStorage` (tests, simulation) and
:class:`SQLiteStorage` (a SQLite database in WAL mode, through aiosqlite; its layout, creation,
header checks and migration are the public module :mod:`phalanx_aio.storage.schema`).
"""

from phalanx_aio.storage.base import Storage, StoredState
from phalanx_aio.storage.memory import MemoryStorage
from phalanx_aio.storage.sqlite import SQLiteStorage

__all__ = ["MemoryStorage", "SQLiteStorage", "Storage", "StoredState"]
