"""Structured logging: node id and term on node-scoped records, the text and JSON formatters,
and the ``serve`` flags that pick them."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import pathlib
from collections.abc import Iterator

import pytest

from phalanx_aio import Config, RaftNode, SQLiteStorage
from phalanx_aio._net import free_loopback_ports
from phalanx_aio.cli.main import build_parser
from phalanx_aio.cli.serve import resolve_settings
from phalanx_aio.core.types import Message, MessageType
from phalanx_aio.errors import ConfigError
from phalanx_aio.kv import KVStateMachine
from phalanx_aio.observability import (
    JsonFormatter,
    NodeContextFilter,
    TextFormatter,
    bind_node,
    configure_logging,
)
from phalanx_aio.transport.grpc import GrpcTransport
from tests.helpers import poll_until
from tests.node.harness import Harness

DEADLINE = 15.0


class Capture(logging.Handler):
    """Keeps every record it sees, after its filters ran."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def capture() -> Iterator[Capture]:
    handler = Capture()
    handler.addFilter(NodeContextFilter())
    root = logging.getLogger("phalanx_aio")
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


async def test_node_records_carry_node_id_and_term(capture: Capture) -> None:
    h = Harness(["n1", "n2", "n3"])
    try:
        for nid in h.ids:
            await h.start(nid)
        leader = await h.leader()
        await h.until(lambda: all(n.leader_id == leader.id for n in h.nodes.values()))
        term = leader.status().term
    finally:
        await h.aclose()
    node_records = [r for r in capture.records if r.name == "phalanx_aio.node"]
    assert node_records
    assert all(
        getattr(r, "node_id", None) in h.ids and isinstance(getattr(r, "term", None), int)
        for r in node_records
    )
    news = [r for r in node_records if r.getMessage().endswith(f"leader is now {leader.id}")]
    assert {r.node_id for r in news} == set(h.ids)  # type: ignore[attr-defined]
    assert {r.term for r in news} == {term}  # type: ignore[attr-defined]


async def test_records_of_other_loggers_get_the_bound_node(capture: Capture, tmp_path: pathlib.Path) -> None:
    """The transport's server tasks and the caller's task inherit the binding; a task that bound
    nothing gets no node."""
    a_addr, b_addr = (f"127.0.0.1:{p}" for p in free_loopback_ports(2))
    node = RaftNode(
        "n1",
        address=a_addr,
        peers={},
        state_machine=KVStateMachine(),
        storage=SQLiteStorage(tmp_path / "n1.db"),
        config=Config.lan(tick_interval=0.02),
        cluster_id="ours",
        transport=GrpcTransport(node_id="n1", cluster_id="ours", listen=a_addr),
    )

    async def serve_node(started: asyncio.Event, stop: asyncio.Event) -> None:
        bind_node(node)
        async with node:
            await node.wait_for_leader(DEADLINE)
            logging.getLogger("phalanx_aio.kv").info("from the serving task")
            started.set()
            await stop.wait()

    async def unbound() -> None:
        logging.getLogger("phalanx_aio.cli").info("from an unbound task")

    started, stop = asyncio.Event(), asyncio.Event()
    server = asyncio.create_task(serve_node(started, stop))
    foreign = GrpcTransport(node_id="x", cluster_id="theirs", listen=b_addr)

    class Sink:
        def on_messages(self, sender: str, messages: object) -> None: ...
        def on_unreachable(self, peer: str) -> None: ...
        def on_snapshot_status(self, peer: str, ok: bool) -> None: ...

    try:
        await asyncio.wait_for(started.wait(), DEADLINE)
        await unbound()
        await foreign.start(Sink())
        foreign.set_peers({"n1": a_addr})
        foreign.send([Message(MessageType.HEARTBEAT, "n1", "x", 1)])
        await poll_until(lambda: any("rejected a call" in r.getMessage() for r in capture.records), DEADLINE)
        term = node.status().term
    finally:
        await foreign.aclose()
        stop.set()
        await server

    def one(text: str) -> logging.LogRecord:
        return next(r for r in capture.records if text in r.getMessage())

    served = one("from the serving task")
    assert (served.node_id, served.term) == ("n1", term)  # type: ignore[attr-defined]
    rejected = one("rejected a call")  # logged in a gRPC server task of n1's transport
    assert rejected.name == "phalanx_aio.transport.grpc"
    assert (rejected.node_id, rejected.term) == ("n1", term)  # type: ignore[attr-defined]
    loose = one("from an unbound task")
    assert (loose.node_id, loose.term) == (None, None)  # type: ignore[attr-defined]


def _record(msg: str, *, exc: bool = False, **extra: object) -> logging.LogRecord:
    logger = logging.getLogger("phalanx_aio.test")
    exc_info = None
    if exc:
        try:
            raise ValueError("boom")
        except ValueError as e:
            exc_info = (type(e), e, e.__traceback__)
    return logger.makeRecord(logger.name, logging.WARNING, __file__, 1, msg, (), exc_info, extra=extra)


def test_json_lines_parse_and_carry_the_fields() -> None:
    fmt = JsonFormatter()
    doc = json.loads(fmt.format(_record("[n2 t7] leader is now n2", node_id="n2", term=7)))
    assert set(doc) == {"ts", "level", "logger", "node_id", "term", "msg", "exception"}
    assert (doc["level"], doc["logger"], doc["node_id"], doc["term"]) == (
        "WARNING",
        "phalanx_aio.test",
        "n2",
        7,
    )
    assert doc["msg"] == "leader is now n2"  # the adapter's prefix is not repeated
    assert doc["ts"].endswith("Z") and doc["exception"] is None
    line = fmt.format(_record("multi\nline \u00e9", exc=True))
    assert "\n" not in line
    doc = json.loads(line)
    assert (doc["node_id"], doc["term"], doc["msg"]) == (None, None, "multi\nline \u00e9")
    assert "ValueError: boom" in doc["exception"] and "Traceback" in doc["exception"]


def test_text_lines() -> None:
    fmt = TextFormatter()
    line = fmt.format(_record("[n2 t7] leader is now n2", node_id="n2", term=7))
    assert line.endswith(" WARNING phalanx_aio.test [n2 t7] leader is now n2")
    assert fmt.format(_record("no node")).endswith(" WARNING phalanx_aio.test no node")
    assert "ValueError: boom" in fmt.format(_record("failed", exc=True))


def test_configure_logging_replaces_root_handlers_and_checks_input() -> None:
    root = logging.getLogger()
    saved, level = list(root.handlers), root.level
    out = io.StringIO()
    try:
        handler = configure_logging("json", "warning", stream=out)
        assert root.handlers == [handler] and root.level == logging.WARNING
        logging.getLogger("phalanx_aio.cli").info("not shown")
        logging.getLogger("phalanx_aio.cli").warning("shown")
        lines = out.getvalue().splitlines()
        assert [json.loads(x)["msg"] for x in lines] == ["shown"]
        with pytest.raises(ConfigError, match="log format"):
            configure_logging("xml")
        with pytest.raises(ConfigError, match="log level"):
            configure_logging("text", "loud")
    finally:
        for h in list(root.handlers):
            root.removeHandler(h)
        for h in saved:
            root.addHandler(h)
        root.setLevel(level)


def test_serve_log_settings(tmp_path: pathlib.Path) -> None:
    base = ["serve", "--id", "n1", "--listen", "127.0.0.1:7001", "--data-dir", str(tmp_path)]
    parser = build_parser()
    s = resolve_settings(parser.parse_args(base), {})
    assert (s.log_format, s.log_level) == ("text", "info")
    s = resolve_settings(parser.parse_args([*base, "--log-format", "json", "--log-level", "debug"]), {})
    assert (s.log_format, s.log_level) == ("json", "debug")
    s = resolve_settings(
        parser.parse_args(base), {"PHALANX_LOG_FORMAT": "json", "PHALANX_LOG_LEVEL": "ERROR"}
    )
    assert (s.log_format, s.log_level) == ("json", "error")
    cfg = tmp_path / "n1.toml"
    cfg.write_text('log_format = "yaml"\n')
    with pytest.raises(ConfigError, match="--log-format"):
        resolve_settings(parser.parse_args([*base, "--config", str(cfg)]), {})
    with pytest.raises(ConfigError, match="--log-level"):
        resolve_settings(parser.parse_args(base), {"PHALANX_LOG_LEVEL": "chatty"})
    with pytest.raises(SystemExit):
        parser.parse_args([*base, "--log-format", "xml"])
