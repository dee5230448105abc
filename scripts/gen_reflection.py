"""Write the descriptors that server reflection serves: ``phalanx_aio/observability/reflection.binpb``.

The file is a ``FileDescriptorSet`` (protoc's ``--descriptor_set_out``) of every ``.proto`` file
whose services a node serves: ``phalanx/v1/kv.proto``, ``phalanx/v1/raft.proto`` and
``grpc/health/v1/health.proto``. Run it after changing one of them; ``--check`` only reports
whether the committed file is stale (``tests/observability/test_grpc_reflection.py`` runs it).
Needs ``grpcio-tools`` (the ``codegen`` extra).
"""

from __future__ import annotations

import argparse
import pathlib
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
PROTO_FILES = ("phalanx/v1/kv.proto", "phalanx/v1/raft.proto", "grpc/health/v1/health.proto")
OUT = ROOT / "phalanx_aio" / "observability" / "reflection.binpb"


def generate(out: pathlib.Path) -> None:
    """Run protoc (``grpc_tools.protoc``) to write the descriptor set to ``out``."""
    cmd = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        "--include_imports",
        f"--descriptor_set_out={out}",
        *PROTO_FILES,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=PROTO_ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"protoc failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")


def is_stale() -> bool:
    """Whether the committed descriptor set differs from what protoc writes now."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = pathlib.Path(tmp) / "fresh.binpb"
        generate(fresh)
        return not OUT.exists() or fresh.read_bytes() != OUT.read_bytes()


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report whether the file is stale")
    args = parser.parse_args(argv)
    if args.check:
        if is_stale():
            print(f"{OUT.relative_to(ROOT)} is stale; run scripts/gen_reflection.py", file=sys.stderr)
            return 1
        print(f"{OUT.relative_to(ROOT)} is up to date")
        return 0
    generate(OUT)
    print(f"wrote {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
