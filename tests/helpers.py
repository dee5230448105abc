"""Helpers shared by the driver, transport and KV tests."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable

from phalanx_aio import RaftNode


async def poll_until(pred: Callable[[], bool], deadline: float, every: float = 0.01) -> None:
    """Wait until ``pred()`` holds; ``TimeoutError`` after ``deadline`` seconds."""

    async def poll() -> None:
        while not pred():
            await asyncio.sleep(every)

    await asyncio.wait_for(poll(), deadline)


async def find_leader(nodes: Callable[[], Iterable[RaftNode]], deadline: float) -> RaftNode:
    """The first of ``nodes()`` that is leader, polling until ``deadline`` seconds pass."""
    found: list[RaftNode] = []

    def check() -> bool:
        found[:] = [n for n in nodes() if n.is_leader]
        return bool(found)

    await poll_until(check, deadline)
    return found[0]
