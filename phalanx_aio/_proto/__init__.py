"""Code generated from protos/ by scripts/gen_protos.py (betterproto). Do not edit.

Only the modules in ALLOWED_IMPORTERS may import these; the rest of the library works with its
own dataclasses (a test enforces it).
"""

ALLOWED_IMPORTERS = (
    "phalanx_aio.transport.codec",  # the peer calls' acknowledgements
    "phalanx_aio.kv.codec",  # the KV service's unary Status, membership and transfer messages
)
"""The only library modules that import the generated code.
"""
