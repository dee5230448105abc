"""Run an asyncio program on uvloop when it is installed."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["run", "uvloop_available"]

T = TypeVar("T")


def uvloop_available() -> bool:
    """True if uvloop can be imported (it is a dependency on Linux and macOS)."""
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def run(main: Coroutine[Any, Any, T], *, use_uvloop: bool = True) -> T:
    """Like :func:`asyncio.run`, on uvloop's faster event loop when available.

    ``phalanx_aio.run(main())`` is the one-line way to run a program embedding a
    :class:`~phalanx_aio.RaftNode` on uvloop; pass ``use_uvloop=False`` for the standard loop.
    """
    if use_uvloop and uvloop_available():
        import uvloop

        return uvloop.run(main)
    return asyncio.run(main)
