"""A three-node cluster on the in-memory transport and in-memory stores (LAN timing)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

# Fast, still generous timing: 10 ms ticks, elections after 100-200 ms.
from tests.node.harness import Harness


@pytest.fixture
async def cluster() -> AsyncIterator[Harness]:
    h = Harness(["n1", "n2", "n3"])
    for nid in h.ids:
        await h.start(nid)
    try:
        yield h
    finally:
        await h.aclose()
