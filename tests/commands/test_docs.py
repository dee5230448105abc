"""The Python blocks of the command-layer and batteries pages run as written (in order, in one
namespace per page, as a reader would paste them)."""

from __future__ import annotations

import asyncio
import pathlib
import re
from typing import Any

import pytest

DOCS = pathlib.Path(__file__).resolve().parents[2] / "docs"


def run_page(name: str) -> dict[str, Any]:
    blocks = re.findall(r"^```python\n(.*?)^```", (DOCS / name).read_text(), re.MULTILINE | re.DOTALL)
    assert blocks, f"no python blocks in {name}"
    namespace: dict[str, Any] = {"__name__": f"docs_{name.removesuffix('.md')}"}
    for block in blocks:
        exec(compile(block, f"docs/{name}", "exec", dont_inherit=True), namespace)
    return namespace


def test_commands_page(capsys: pytest.CaptureFixture[str]) -> None:
    ns = run_page("commands.md")
    assert "refused: no pear left" in capsys.readouterr().out
    # The classes the page defines behave as it says.
    orders = ns["Orders"]()
    data = orders._rs_codec().encode([ns["Order"]("apple", 2), ns["Priority"].HIGH])
    assert orders._rs_codec().decode(data) == [ns["Order"]("apple", 2), ns["Priority"].HIGH]
    recent = ns["Recent"]()
    recent._events.extend(["a", "b"])
    copy = ns["Recent"]()
    copy.restore(recent.snapshot())
    assert list(copy._events) == ["a", "b"]


def test_batteries_page() -> None:
    ns = run_page("batteries.md")

    async def fenced() -> list[bool]:
        from phalanx_aio import MemoryStorage, RaftNode
        from phalanx_aio.batteries import LockManager
        from phalanx_aio.transport.memory import MemoryNetwork

        locks, store = LockManager(), {"fence": 0}
        net = MemoryNetwork()
        node = RaftNode(
            "n1",
            address="mem://n1",
            peers={},
            state_machine=locks,
            storage=MemoryStorage("n1"),
            transport=net.transport("n1"),
        )
        async with node:
            await node.wait_for_leader()
            first = await ns["nightly_report"](locks, store)
            store["fence"] = 10**6  # a newer holder wrote since: this one is fenced off
            second = await ns["nightly_report"](locks, store)
            assert not locks.is_locked("nightly-report")  # released both times
            return [first, second]

    assert asyncio.run(fenced()) == [True, False]
