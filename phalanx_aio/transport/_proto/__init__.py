"""Code generated from protos/ by scripts/gen_protos.py (betterproto). Do not edit.

Only phalanx_aio.transport.codec may import these modules; the rest of the library works with
the core's own dataclasses.
"""
