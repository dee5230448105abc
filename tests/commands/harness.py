"""A three-node in-memory cluster whose members host replicated objects."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from phalanx_aio import RaftNode
from tests.node.harness import DEADLINE, Harness


class ObjectHarness(Harness):
    """Like the node tests' Harness, but every member gets fresh objects from
    ``factory(member id)`` (one replicated object, or a list of them) instead of a Counter."""

    def __init__(
        self, factory: Callable[[str], Any], ids: list[str] | None = None, **node_kw: object
    ) -> None:
        super().__init__(ids or ["n1", "n2", "n3"], **node_kw)
        self.factory = factory
        self.objs: dict[str, Any] = {}

    def make(self, nid: str, **kw: object) -> RaftNode:
        self.objs[nid] = self.factory(nid)
        return super().make(nid, state_machine=self.objs[nid], **kw)


async def start_all(h: ObjectHarness) -> None:
    """Start every member and wait until each knows the leader."""
    for nid in h.ids:
        await h.start(nid)
    for node in h.nodes.values():
        await node.wait_for_leader(DEADLINE)


async def started(h: ObjectHarness) -> AsyncIterator[ObjectHarness]:
    """Start every member; close them all afterwards (for fixtures)."""
    await start_all(h)
    try:
        yield h
    finally:
        await h.aclose()
