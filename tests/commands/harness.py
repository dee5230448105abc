"""A three-node in-memory cluster whose members host replicated objects."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from phalanx_aio import RaftNode
from tests.node.conftest import Harness


class ObjectHarness(Harness):
    """Like the node tests' Harness, but every member gets fresh objects from ``factory``
    (one replicated object, or a list of them) instead of a Counter."""

    def __init__(self, factory: Callable[[], Any], ids: list[str] | None = None, **node_kw: object) -> None:
        super().__init__(ids or ["n1", "n2", "n3"], **node_kw)
        self.factory = factory
        self.objs: dict[str, Any] = {}

    def make(self, nid: str, **kw: object) -> RaftNode:
        self.objs[nid] = self.factory()
        return super().make(nid, state_machine=self.objs[nid], **kw)


async def started(h: ObjectHarness) -> AsyncIterator[ObjectHarness]:
    """Start every member; close them all afterwards (for fixtures)."""
    for nid in h.ids:
        await h.start(nid)
    try:
        yield h
    finally:
        await h.aclose()
