"""The gRPC services declared in ``protos/``, read from the .proto files themselves (the generated
code carries no service classes: the library serves and calls its methods with its own codecs)."""

from __future__ import annotations

import pathlib
import re

PROTOS = pathlib.Path(__file__).resolve().parents[1] / "protos" / "phalanx" / "v1"


def proto_methods(service: str) -> dict[str, tuple[bool, bool]]:
    """Method path -> (client streams, server streams) for ``service`` of package phalanx.v1."""
    for path in sorted(PROTOS.glob("*.proto")):
        text = path.read_text()
        found = re.search(r"service\s+" + re.escape(service) + r"\s*\{(.*?)\n\}", text, re.S)
        if found is None:
            continue
        rpcs = re.findall(
            r"rpc\s+(\w+)\s*\(\s*(stream\s+)?\w+\s*\)\s*returns\s*\(\s*(stream\s+)?\w+\s*\)", found.group(1)
        )
        return {f"/phalanx.v1.{service}/{name}": (bool(cs), bool(ss)) for name, cs, ss in rpcs}
    raise LookupError(f"no service {service} in {PROTOS}")
