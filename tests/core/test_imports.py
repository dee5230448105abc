"""The core imports only the standard library (and the stdlib-only errors module)."""

import ast
import pathlib
import sys

import phalanx_aio.core

CORE = pathlib.Path(phalanx_aio.core.__file__).parent
ERRORS = CORE.parent / "errors.py"
FORBIDDEN = {"asyncio", "time", "os", "threading", "socket", "selectors", "subprocess", "multiprocessing"}
ALLOWED_INTERNAL = ("phalanx_aio.core", "phalanx_aio.errors")


def _imports(path: pathlib.Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path.name}: use absolute imports"
            names.append(node.module or "")
    return names


def _module_level_random_calls(path: pathlib.Path) -> list[str]:
    """Calls like random.random() or random.randrange() use the global generator."""
    tree = ast.parse(path.read_text(), str(path))
    bad = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id == "random"
            and node.attr != "Random"
        ):
            bad.append(f"{path.name}:{node.lineno}: random.{node.attr}")
    return bad


def test_core_imports_only_stdlib() -> None:
    files = [*sorted(CORE.glob("*.py")), ERRORS]
    assert len(files) > 5
    for path in files:
        for name in _imports(path):
            top = name.split(".")[0]
            if name.startswith(ALLOWED_INTERNAL):
                continue
            assert top in sys.stdlib_module_names, f"{path.name} imports non-stdlib {name!r}"
            assert top not in FORBIDDEN, f"{path.name} imports forbidden {name!r}"


def test_core_uses_no_global_random() -> None:
    for path in sorted(CORE.glob("*.py")):
        assert _module_level_random_calls(path) == []


def test_scanner_has_teeth(tmp_path: pathlib.Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import asyncio\nimport random\nx = random.random()\n")
    assert "asyncio" in _imports(bad)
    assert _module_level_random_calls(bad) == ["bad.py:3: random.random"]
