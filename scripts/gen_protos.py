#!/usr/bin/env python3
"""Regenerate phalanx_aio/_proto/ from protos/ with the betterproto plugin.

Usage (from anywhere, inside the project's virtualenv)::

    python scripts/gen_protos.py           # rewrite the committed generated code
    python scripts/gen_protos.py --check   # exit 1 if the committed code is stale

Needs the compiler packages: ``betterproto[compiler]`` (the ``protoc-gen-python_betterproto``
plugin, black, isort, jinja2) and ``grpcio-tools`` (protoc itself, as ``grpc_tools.protoc``).
The runtime needs neither: it imports the generated modules with plain ``betterproto``.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
PROTO_FILES = ("phalanx/v1/kv.proto", "phalanx/v1/raft.proto")
OUT_DIR = ROOT / "phalanx_aio" / "_proto"
PLUGIN_NAME = "protoc-gen-python_betterproto"

PACKAGE_DOC = '''"""Code generated from protos/ by scripts/gen_protos.py (betterproto). Do not edit.

Only the modules in ALLOWED_IMPORTERS may import these; the rest of the library works with its
own dataclasses (a test enforces it).
"""

ALLOWED_IMPORTERS = (
    "phalanx_aio.transport.codec",  # the peer calls' acknowledgements
    "phalanx_aio.kv.codec",  # the KV service's unary Status, membership and transfer messages
)
"""The only library modules that import the generated code.
"""
'''


class CompilerMissing(RuntimeError):
    """protoc (grpcio-tools) or the betterproto plugin (betterproto[compiler]) is not installed."""


def find_plugin() -> str:
    """The path of the betterproto protoc plugin, preferring the running interpreter's bin dir."""
    beside = pathlib.Path(sys.executable).parent / PLUGIN_NAME
    if beside.exists():
        return str(beside)
    found = shutil.which(PLUGIN_NAME)
    if found is None:
        raise CompilerMissing(f"{PLUGIN_NAME} not found: install betterproto[compiler]")
    return found


def check_compiler() -> None:
    """Raise :class:`CompilerMissing` unless protoc and the plugin (with its deps) are importable."""
    try:
        import black  # noqa: F401
        import grpc_tools.protoc  # type: ignore[import-untyped]  # noqa: F401
        import isort  # noqa: F401
        import jinja2  # noqa: F401
    except ImportError as exc:
        needs = "betterproto[compiler] and grpcio-tools"
        raise CompilerMissing(f"{exc.name} is not installed (needs {needs})") from exc
    find_plugin()


def generate(out_dir: pathlib.Path) -> list[pathlib.Path]:
    """Generate the package into ``out_dir`` (created if needed); return the files, relative."""
    check_compiler()
    out_dir.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"--plugin={PLUGIN_NAME}={find_plugin()}",
        f"-I{PROTO_ROOT}",
        f"--python_betterproto_out={out_dir}",
        *(str(PROTO_ROOT / name) for name in PROTO_FILES),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"protoc failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
    (out_dir / "__init__.py").write_text(PACKAGE_DOC)
    for module in out_dir.rglob("*.py"):
        code = module.read_text()
        if module != out_dir / "__init__.py" and code.strip():
            module.write_text(strip_services(code))
    return sorted(p.relative_to(out_dir) for p in out_dir.rglob("*.py"))


_SERVICE_BASES = ("betterproto.ServiceStub", "ServiceBase")


def _service_only(node: ast.stmt) -> bool:
    """True for a generated service class, or an import that only the service classes use."""
    if isinstance(node, ast.ClassDef):
        return any(ast.unparse(b) in _SERVICE_BASES for b in node.bases)
    if isinstance(node, ast.Import):
        return all(a.name.startswith("grpclib") for a in node.names)
    if isinstance(node, ast.ImportFrom):
        return (node.module or "").startswith(("grpclib", "betterproto.grpc"))
    return (
        isinstance(node, ast.If)
        and ast.unparse(node.test) == "TYPE_CHECKING"
        and all(isinstance(n, ast.Import | ast.ImportFrom) for n in node.body)
    )


def strip_services(code: str) -> str:
    """``code`` without the gRPC service stubs and bases betterproto generates, and without the
    imports only they use: the library serves and calls its methods with its own codecs, so
    the generated service classes (and grpclib at import time) are never needed."""
    tree = ast.parse(code)
    drop = [
        (min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", ()))]), node.end_lineno)
        for node in tree.body
        if _service_only(node)
    ]
    lines = code.splitlines(keepends=True)
    for start, end in sorted(drop, reverse=True):
        del lines[start - 1 : end or start]
    return re.sub(r"\n{4,}", "\n\n\n", "".join(lines)).rstrip() + "\n"


def _same_code(a: str, b: str) -> bool:
    """Equal text, or equal syntax trees (black versions may format the same code differently)."""
    if a == b:
        return True
    try:
        return ast.dump(ast.parse(a)) == ast.dump(ast.parse(b))
    except SyntaxError:
        return False


def stale_report(committed: pathlib.Path = OUT_DIR, fresh_dir: pathlib.Path | None = None) -> str:
    """Describe how ``committed`` differs from freshly generated code ('' if it does not).

    The fresh code is generated into a temporary directory, or taken from ``fresh_dir`` if given
    (a directory :func:`generate` filled).
    """
    with tempfile.TemporaryDirectory() as tmp:
        if fresh_dir is None:
            fresh_dir = pathlib.Path(tmp)
            generate(fresh_dir)
        fresh = {p.relative_to(fresh_dir) for p in fresh_dir.rglob("*.py")}
        have = {p.relative_to(committed) for p in committed.rglob("*.py")} if committed.exists() else set()
        problems: list[str] = []
        for rel in sorted(fresh - have):
            problems.append(f"missing: {rel}")
        for rel in sorted(have - fresh):
            problems.append(f"not generated any more: {rel}")
        for rel in sorted(fresh & have):
            new, old = (fresh_dir / rel).read_text(), (committed / rel).read_text()
            if not _same_code(new, old):
                diff = difflib.unified_diff(
                    old.splitlines(), new.splitlines(), f"committed/{rel}", f"generated/{rel}", lineterm=""
                )
                problems.append(f"differs: {rel}\n" + "\n".join(list(diff)[:60]))
    return "\n".join(problems)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check", action="store_true", help="only report whether the generated code is stale"
    )
    args = parser.parse_args(argv)
    try:
        if args.check:
            report = stale_report()
            if report:
                print(f"generated code is stale; run scripts/gen_protos.py\n{report}", file=sys.stderr)
                return 1
            print("generated code is up to date")
            return 0
        with tempfile.TemporaryDirectory() as tmp:
            files = generate(pathlib.Path(tmp))
            if OUT_DIR.exists():
                shutil.rmtree(OUT_DIR)
            shutil.copytree(tmp, OUT_DIR)
    except CompilerMissing as exc:
        print(f"cannot generate: {exc}", file=sys.stderr)
        return 2
    for rel in files:
        print(f"wrote {OUT_DIR.relative_to(ROOT) / rel}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
