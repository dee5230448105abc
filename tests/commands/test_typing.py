"""mypy sees what a command call returns: an awaitable of the method's result, with the
method's parameters checked."""

from __future__ import annotations

import pathlib
import re
import textwrap

import pytest

api = pytest.importorskip("mypy.api")

SNIPPET = textwrap.dedent(
    """
    from phalanx_aio import ReplicatedState, command
    from phalanx_aio.batteries import LockManager, ReplicatedDict, ReplicatedList

    class Inventory(ReplicatedState):
        def __init__(self) -> None:
            self.stock: dict[str, int] = {}

        @command
        def add(self, item: str, n: int = 1) -> int:
            self.stock[item] = self.stock.get(item, 0) + n
            return self.stock[item]

    async def main(
        inv: Inventory, d: ReplicatedDict[str, int], xs: ReplicatedList[bytes], locks: LockManager
    ) -> None:
        reveal_type(inv.add("apple", 3))  # R1
        reveal_type(await inv.add("apple"))  # R2
        reveal_type(await inv.read(lambda s: s.stock))  # R3
        reveal_type(await d.pop("k"))  # R4
        reveal_type(d.get("k"))  # R5
        reveal_type(await xs.pop())  # R6
        reveal_type(await locks.acquire("job", ttl=5.0))  # R7
        await inv.add("apple", "3")  # E1
        await d.set("k", "v")  # E2
    """
)

EXPECTED = {
    "R1": "typing.Coroutine[Any, Any, int]",
    "R2": "int",
    "R3": "dict[str, int]",
    "R4": "int | None",
    "R5": "int | None",
    "R6": "bytes",
    "R7": "int | None",
}


def test_mypy_types_command_calls(tmp_path: pathlib.Path) -> None:
    src = tmp_path / "snippet.py"
    src.write_text(SNIPPET)
    lines = SNIPPET.splitlines()
    out, err, _ = api.run(
        [
            "--strict",
            "--no-error-summary",
            "--disable-error-code=unused-coroutine",
            "--cache-dir",
            str(tmp_path / "cache"),
            str(src),
        ]
    )
    assert not err, err
    revealed: dict[str, str] = {}
    errors: dict[str, str] = {}
    for m in re.finditer(r"snippet\.py:(\d+): (note|error): (.*)", out):
        marker = re.search(r"# (\w+)$", lines[int(m.group(1)) - 1])
        if marker is None:
            raise AssertionError(f"unexpected mypy output: {m.group(0)}")
        if m.group(2) == "note":
            found = re.fullmatch(r'Revealed type is "(.*)"', m.group(3))
            assert found is not None, m.group(0)
            revealed[marker.group(1)] = found.group(1).replace("builtins.", "")  # older mypy spells it
        else:
            errors[marker.group(1)] = m.group(3)
    assert revealed == EXPECTED
    assert set(errors) == {"E1", "E2"}, errors
    assert 'incompatible type "str"; expected "int"' in errors["E1"]
    assert 'incompatible type "str"; expected "int"' in errors["E2"]
