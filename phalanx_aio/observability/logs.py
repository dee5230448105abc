"""Structured logging: every node-scoped record carries ``node_id`` and ``term``.

Records logged by a :class:`~phalanx_aio.node.RaftNode` itself (logger ``phalanx_aio.node``)
carry both attributes already. The transport (``phalanx_aio.transport.grpc``), the KV service
(``phalanx_aio.kv``), the observability endpoint and ``serve`` (``phalanx_aio.cli``) log through
plain module loggers; :class:`NodeContextFilter`, attached to a handler, gives their records the
node id and the current term of the node *bound to the running context* with
:func:`bind_node`. The binding is a :mod:`contextvars` variable, so it follows the tasks a node
starts after it was bound (its loop, its transport's server and streams, the KV handlers) and
nothing else: several nodes in one process each get their own, if each is bound and started in
its own task.

Two formatters: :class:`TextFormatter` (one readable line) and :class:`JsonFormatter` (one JSON
object per line with ``ts``, ``level``, ``logger``, ``node_id``, ``term``, ``msg`` and
``exception``). :func:`configure_logging` sets up the root logger with either, as
``phalanx-aio serve --log-format text|json --log-level LEVEL`` does.
"""

from __future__ import annotations

import contextvars
import datetime
import json
import logging
import re
import sys
from typing import TYPE_CHECKING, Final, TextIO

from phalanx_aio.errors import ConfigError, PhalanxError

if TYPE_CHECKING:
    from phalanx_aio.node.raft_node import RaftNode

__all__ = [
    "LOG_FORMATS",
    "LOG_LEVELS",
    "JsonFormatter",
    "NodeContextFilter",
    "TextFormatter",
    "bind_node",
    "configure_logging",
]

LOG_FORMATS: Final = ("text", "json")
"""The values ``--log-format`` accepts."""

LOG_LEVELS: Final = ("debug", "info", "warning", "error")
"""The values ``--log-level`` accepts."""

_current_node: contextvars.ContextVar[RaftNode | None] = contextvars.ContextVar(
    "phalanx_current_node", default=None
)
# RaftNode's own adapter prefixes messages with "[id tTERM] " for plain handlers; the
# formatters below print the fields themselves, so they drop that prefix.
_PREFIX: Final = re.compile(r"^\[[^\]\s]* t\d+\] ")


def bind_node(node: RaftNode | None) -> contextvars.Token[RaftNode | None]:
    """Make ``node`` the node of the current context (and of the tasks created from it from now
    on) for :class:`NodeContextFilter`; ``None`` unbinds. Returns a token for
    :meth:`contextvars.ContextVar.reset`."""
    return _current_node.set(node)


def _node_term(node: RaftNode) -> int:
    try:
        return node.status().term
    except PhalanxError:  # not started: no term yet
        return 0


class NodeContextFilter(logging.Filter):
    """A handler filter that sets ``record.node_id`` and ``record.term`` where they are missing:
    from ``node`` if given, else from the node bound with :func:`bind_node`. Records with no node
    in sight get ``None`` for both. It never drops a record."""

    def __init__(self, node: RaftNode | None = None) -> None:
        super().__init__()
        self.node = node
        """The node to describe, or ``None`` to use the context's (see :func:`bind_node`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Add the missing attributes; always True."""
        if hasattr(record, "node_id") and hasattr(record, "term"):
            return True
        node = self.node if self.node is not None else _current_node.get()
        if not hasattr(record, "node_id"):
            record.node_id = node.id if node is not None else None
        if not hasattr(record, "term"):
            record.term = _node_term(node) if node is not None else None
        return True


def _message(record: logging.LogRecord) -> str:
    return _PREFIX.sub("", record.getMessage(), count=1)


def _timestamp(record: logging.LogRecord) -> str:
    ts = datetime.datetime.fromtimestamp(record.created, tz=datetime.UTC)
    return ts.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line: ``ts`` (ISO 8601, UTC, milliseconds),
    ``level``, ``logger``, ``node_id`` and ``term`` (``null`` if the record has none), ``msg``,
    and ``exception`` (the formatted traceback, or ``null``)."""

    def format(self, record: logging.LogRecord) -> str:
        """Render ``record`` as one line of JSON."""
        exception = None
        if record.exc_info:
            exception = self.formatException(record.exc_info)
        elif record.exc_text:
            exception = record.exc_text
        doc = {
            "ts": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "node_id": getattr(record, "node_id", None),
            "term": getattr(record, "term", None),
            "msg": _message(record),
            "exception": exception,
        }
        return json.dumps(doc, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """``TS LEVEL LOGGER [NODE tTERM] MESSAGE``, then the traceback if any; the bracket is left
    out for records without a node."""

    def format(self, record: logging.LogRecord) -> str:
        """Render ``record`` as a readable line (plus traceback lines)."""
        node_id = getattr(record, "node_id", None)
        where = f" [{node_id} t{getattr(record, 'term', None)}]" if node_id is not None else ""
        line = f"{_timestamp(record)} {record.levelname} {record.name}{where} {_message(record)}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        elif record.exc_text:
            line += "\n" + record.exc_text
        return line


def configure_logging(
    fmt: str = "text", level: str = "info", *, stream: TextIO | None = None
) -> logging.Handler:
    """Log to ``stream`` (default stderr) in format ``fmt`` (``text`` or ``json``) at ``level``
    (``debug``, ``info``, ``warning``, ``error``): replaces the root logger's handlers with one
    carrying a :class:`NodeContextFilter`, and returns that handler. Raises
    :class:`~phalanx_aio.errors.ConfigError` on an unknown format or level."""
    if fmt not in LOG_FORMATS:
        raise ConfigError(f"log format must be one of {', '.join(LOG_FORMATS)}, not {fmt!r}")
    if level.lower() not in LOG_LEVELS:
        raise ConfigError(f"log level must be one of {', '.join(LOG_LEVELS)}, not {level!r}")
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(NodeContextFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    return handler
