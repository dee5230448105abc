"""The packages import each other only in the directions that ``docs/architecture.md`` draws.

Every ``import`` of every library module counts, wherever it stands (module level, inside a
function, under ``TYPE_CHECKING``): a lazy import is still an edge. The table below is the
diagram of the architecture page, and a test checks that the two agree.
"""

from __future__ import annotations

import ast
import pathlib
import re
from collections.abc import Iterator

import phalanx_aio

PACKAGE = pathlib.Path(phalanx_aio.__file__).parent
ROOT = PACKAGE.parent
ROOT_UNIT = "phalanx_aio"

ALLOWED: dict[str, frozenset[str]] = {
    unit: frozenset(targets.split())
    for unit, targets in {
        "errors": "",
        "core": "errors",
        "sim": "core errors",
        "_entry_batch": "_protowire core",
        "_protowire": "errors",
        "_proto": "",
        "_budget": "",
        "_grpc": "_budget",
        "_deadlines": "",
        "_net": "",
        "_fs": "",
        "_version": "",
        "storage": "_entry_batch _fs core errors",
        "transport": "_budget _entry_batch _grpc _proto _protowire core errors",
        "node": "_deadlines _entry_batch core errors storage transport",
        "commands": "errors node",
        "batteries": "commands errors",
        "observability": "_grpc _protowire _version core errors node",
        "kv": "_budget _deadlines _grpc _proto _protowire errors node observability",
        "cli": "_fs _grpc _net _version core errors kv node observability sim storage transport",
        "chaos": "_net cli core errors kv node storage transport",
        ROOT_UNIT: "_version commands core errors node storage",
    }.items()
}
"""Unit -> the units it may import. A unit is a subpackage or a top-level module of
``phalanx_aio`` (``phalanx_aio`` itself is its ``__init__``, the public API)."""

REMOVED_BACK_EDGES = {
    ("transport", "kv"),  # the KV wire format lives in kv/codec.py
    ("kv", "transport"),  # the KV service and client use the shared _grpc and _protowire
    ("observability", "kv"),  # MeteredKVService lives in kv and reports to NodeMetrics
    ("observability", "transport"),  # the health messages have their own small codec
    ("node", "commands"),  # the command layer registers itself with node/_attach.py
}
"""Edges that existed once and must not come back (each also absent from :data:`ALLOWED`)."""


def unit_of(module: str) -> str | None:
    """The unit of a dotted module name (``None`` outside the library)."""
    parts = module.split(".")
    if parts[0] != ROOT_UNIT:
        return None
    return parts[1] if len(parts) > 1 else ROOT_UNIT


def module_name(path: pathlib.Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def imported_modules(path: pathlib.Path) -> Iterator[str]:
    """Every module ``path`` imports, anywhere in it; ``from a import b`` yields ``a.b`` too."""
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: use absolute imports"
            base = node.module or ""
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)


def edges() -> dict[tuple[str, str], list[str]]:
    """(importing unit, imported unit) -> the modules that import so."""
    found: dict[tuple[str, str], list[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        source = module_name(path)
        src = unit_of(source)
        assert src is not None
        if src == "_proto":
            continue  # generated code imports only betterproto
        for name in imported_modules(path):
            dst = unit_of(name)
            if dst is None or dst == src or (dst == ROOT_UNIT and name != ROOT_UNIT):
                continue
            found.setdefault((src, dst), [])
            if source not in found[(src, dst)]:
                found[(src, dst)].append(source)
    return found


def test_every_unit_is_in_the_table() -> None:
    units = {unit_of(module_name(p)) for p in PACKAGE.rglob("*.py")}
    assert units == set(ALLOWED)


def test_imports_follow_the_allowed_directions() -> None:
    wrong = {edge: who for edge, who in edges().items() if edge[1] not in ALLOWED[edge[0]]}
    assert wrong == {}


def test_every_allowed_direction_is_used() -> None:
    """The table is exact: an edge nobody uses is removed from it (and from the diagram)."""
    used = set(edges())
    unused = {(src, dst) for src, targets in ALLOWED.items() for dst in targets} - used
    assert unused == set()


def test_the_directions_have_no_cycle() -> None:
    done: set[str] = set()

    def visit(unit: str, path: tuple[str, ...]) -> None:
        assert unit not in path, f"cycle: {' -> '.join((*path, unit))}"
        if unit in done:
            return
        for dst in ALLOWED[unit]:
            visit(dst, (*path, unit))
        done.add(unit)

    for unit in ALLOWED:
        visit(unit, ())


def test_removed_back_edges_stay_removed() -> None:
    for src, dst in REMOVED_BACK_EDGES:
        assert dst not in ALLOWED[src]
        assert (src, dst) not in edges()


LAZY_EXPORTS = {
    # not a cycle: `python -m phalanx_aio.chaos.linearizability` must not import its module twice,
    # and the timeline needs the optional matplotlib
    "phalanx_aio.chaos",
}


def test_no_lazy_module_getattr() -> None:
    """No module hides an import behind a module-level ``__getattr__`` (the chaos tools excepted)."""
    lazy = set()
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        names = [n.name for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
        if "__getattr__" in names:
            lazy.add(module_name(path))
    assert lazy == LAZY_EXPORTS


def test_the_scanner_has_teeth(tmp_path: pathlib.Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from phalanx_aio.kv.codec import encode_kv_message\n")
    assert "phalanx_aio.kv.codec.encode_kv_message" in set(imported_modules(bad))
    assert unit_of("phalanx_aio.kv.codec") == "kv"
    assert unit_of("phalanx_aio") == ROOT_UNIT and unit_of("grpclib.client") is None
    assert re.fullmatch(r"\w+", "kv")


def _diagram_edges() -> set[tuple[str, str]]:
    """The arrows of the mermaid diagram in ``docs/architecture.md``, as unit names."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    block = re.search(r"```mermaid\n(.*?)```", text, re.S)
    assert block is not None, "docs/architecture.md has no mermaid diagram"
    labels = dict(re.findall(r'^\s*(\w+)\["([^"]+)"\]\s*$', block.group(1), re.M))
    names = {
        ident: ROOT_UNIT if label.startswith(ROOT_UNIT + " ") else label for ident, label in labels.items()
    }
    arrows = re.findall(r"^\s*(\w+) --> (\w+)\s*$", block.group(1), re.M)
    return {(names[a], names[b]) for a, b in arrows}


def test_the_architecture_page_draws_exactly_this_table() -> None:
    table = {(src, dst) for src, targets in ALLOWED.items() for dst in targets}
    assert _diagram_edges() == table
