"""The committed generated code matches protos/, and only the modules its package names import it."""

from __future__ import annotations

import ast
import importlib.util
import pathlib
import shutil
from types import ModuleType

import pytest

import phalanx_aio
import phalanx_aio._proto

ROOT = pathlib.Path(__file__).resolve().parents[2]
PACKAGE = pathlib.Path(phalanx_aio.__file__).parent
GENERATED = PACKAGE / "_proto"
ALLOWED = {
    PACKAGE.joinpath(*name.split(".")[1:]).with_suffix(".py") for name in phalanx_aio._proto.ALLOWED_IMPORTERS
}


def _load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_protos", ROOT / "scripts" / "gen_protos.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> tuple[ModuleType, pathlib.Path]:
    """The generator module and a directory it just filled from protos/."""
    gen = _load_generator()
    try:
        gen.check_compiler()
    except gen.CompilerMissing as exc:
        pytest.skip(f"protobuf compiler packages missing ({exc}); install the dev extra to run this check")
    out = tmp_path_factory.mktemp("fresh_proto")
    gen.generate(out)
    return gen, out


def test_generated_code_is_fresh(fresh: tuple[ModuleType, pathlib.Path]) -> None:
    gen, out = fresh
    report = gen.stale_report(GENERATED, out)
    assert report == "", f"phalanx_aio/_proto is stale; run scripts/gen_protos.py\n{report}"


def test_staleness_check_has_teeth(fresh: tuple[ModuleType, pathlib.Path], tmp_path: pathlib.Path) -> None:
    gen, out = fresh
    fake = tmp_path / "_proto"
    shutil.copytree(out, fake)
    target = fake / "phalanx" / "v1" / "__init__.py"
    target.write_text(target.read_text().replace("cluster_id: str", "cluster_ident: str", 1))
    (fake / "extra.py").write_text("")
    (fake / "phalanx" / "__init__.py").unlink()
    report = gen.stale_report(fake, out)
    assert "differs: phalanx/v1/__init__.py" in report
    assert "not generated any more: extra.py" in report
    assert "missing: phalanx/__init__.py" in report


def _imports_generated(path: pathlib.Path) -> bool:
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""] if node.level == 0 else ["." * node.level + (node.module or "")]
            names += [f"{names[0]}.{alias.name}" for alias in node.names]
        if any("_proto" in name.split(".") for name in names):
            return True
    return False


def test_only_the_allowed_modules_import_the_generated_code() -> None:
    offenders = [
        str(path.relative_to(PACKAGE))
        for path in sorted(PACKAGE.rglob("*.py"))
        if GENERATED not in path.parents and path not in ALLOWED and _imports_generated(path)
    ]
    assert offenders == []
    assert ALLOWED and all(_imports_generated(path) for path in ALLOWED)


def test_generated_code_carries_no_service_stubs() -> None:
    """The service stubs and bases are stripped at generation: nothing uses them, and without
    them the generated messages do not import grpclib."""
    for path in sorted(GENERATED.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        classes = [n.name for n in tree.body if isinstance(n, ast.ClassDef)]
        assert not [c for c in classes if c.endswith(("Stub", "Base"))], path
        assert "grpclib" not in path.read_text(), path
    gen = _load_generator()
    stub = "import grpclib\n\n\nclass FooStub(betterproto.ServiceStub):\n    pass\n\n\nclass Foo:\n    pass\n"
    assert gen.strip_services(stub).strip() == "class Foo:\n    pass"
