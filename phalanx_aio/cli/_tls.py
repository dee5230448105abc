"""TLS contexts for the command line, with error lines that name the file that failed.

``ssl`` reports a missing or malformed file without its name ("No such file or directory",
"[SSL] PEM lib"); an operator with three files needs to know which one. :func:`tls_context`
checks each file first, then, if the context still cannot be built, finds which file (or
which certificate and key pair) ``ssl`` refuses.
"""

from __future__ import annotations

import pathlib
import ssl
from collections.abc import Callable, Sequence

from phalanx_aio.errors import ConfigError

__all__ = ["TlsFile", "tls_context"]

TlsFile = tuple[str, str | None]
"""``(what, path)``: how the file was given (``--tls-ca``, ``PHALANX_TLS_CA``), and its path."""


def _check_readable(what: str, path: str) -> None:
    p = pathlib.Path(path)
    if not p.exists():
        raise ConfigError(f"TLS setup failed: {what} {path}: no such file")
    if not p.is_file():
        raise ConfigError(f"TLS setup failed: {what} {path}: not a regular file")
    try:
        with p.open("rb"):
            pass
    except OSError as exc:
        raise ConfigError(f"TLS setup failed: {what} {path}: {exc.strerror or exc}") from None


def _culprit(ca: TlsFile | None, cert: TlsFile | None, key: TlsFile | None) -> str:
    """Which of the files ``ssl`` refuses, tried one at a time."""
    if ca is not None and ca[1] is not None:
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(ca[1])
        except (ssl.SSLError, OSError):
            return f"{ca[0]} {ca[1]} (not a PEM CA bundle)"
    if cert is not None and cert[1] is not None:
        keyfile = key[1] if key is not None else None
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert[1], keyfile)
        except (ssl.SSLError, OSError):
            if key is not None and key[1] is not None:
                return (
                    f"{cert[0]} {cert[1]} with {key[0]} {key[1]} (not a PEM certificate and its "
                    "private key, or they do not match)"
                )
            return f"{cert[0]} {cert[1]} (not a PEM certificate with its private key)"
    given = [item for item in (ca, cert, key) if item is not None and item[1] is not None]
    return ", ".join(f"{what} {path}" for what, path in given)


def tls_context(
    build: Callable[[], ssl.SSLContext],
    *,
    ca: TlsFile | None = None,
    cert: TlsFile | None = None,
    key: TlsFile | None = None,
) -> ssl.SSLContext:
    """``build()``, after checking that every file given exists and can be read. Raises
    :class:`ConfigError` with a line naming the file (and how it was given) that failed."""
    files: Sequence[TlsFile | None] = (ca, cert, key)
    for item in files:
        if item is not None and item[1] is not None:
            _check_readable(item[0], item[1])
    try:
        return build()
    except (ssl.SSLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or str(exc)
        raise ConfigError(f"TLS setup failed: {_culprit(ca, cert, key)}: {reason}") from None
