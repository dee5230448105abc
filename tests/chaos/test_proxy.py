"""The link proxy: forwards, delays, blackholes and rejects, and heals cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import pathlib
from collections.abc import AsyncIterator

import pytest

from phalanx_aio._net import free_loopback_ports
from phalanx_aio.chaos.proxy import LinkMode, LinkProxy

DEADLINE = 10.0


@contextlib.asynccontextmanager
async def _echo_and_proxy() -> AsyncIterator[LinkProxy]:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(1024):
                writer.write(data)
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    proxy = LinkProxy("a", "b", ("127.0.0.1", port), free_loopback_ports(1)[0])
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.aclose()
        server.close()
        await server.wait_closed()


async def _roundtrip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes) -> bytes:
    writer.write(data)
    await writer.drain()
    return await asyncio.wait_for(reader.readexactly(len(data)), DEADLINE)


async def test_pass_forwards_both_ways_in_order() -> None:
    async with _echo_and_proxy() as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.listen_port)
        for i in range(20):
            assert await _roundtrip(reader, writer, b"msg%d;" % i) == b"msg%d;" % i
        writer.close()
        assert proxy.stats.connections == 1
        assert proxy.stats.bytes_forwarded > 0


async def test_delay_holds_bytes_back_but_keeps_their_order() -> None:
    async with _echo_and_proxy() as proxy:
        proxy.set_delay(0.05)
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.listen_port)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        payload = b"".join(b"%03d," % i for i in range(100))
        for i in range(100):
            writer.write(b"%03d," % i)
            await writer.drain()
        got = await asyncio.wait_for(reader.readexactly(len(payload)), DEADLINE)
        assert got == payload
        assert loop.time() - t0 >= 0.1  # delayed on the way out and on the way back
        writer.close()


async def test_blackhole_discards_and_heal_cuts_the_connection() -> None:
    async with _echo_and_proxy() as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.listen_port)
        assert await _roundtrip(reader, writer, b"before") == b"before"
        proxy.set_mode(LinkMode.BLACKHOLE)
        writer.write(b"lost")
        await writer.drain()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(reader.read(1), 0.3)
        # A connection made during the blackhole is accepted but hears nothing either.
        r2, w2 = await asyncio.open_connection("127.0.0.1", proxy.listen_port)
        w2.write(b"x")
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(r2.read(1), 0.3)
        proxy.heal()
        # Healing closes the blackholed connections (no stream resumes half-way) ...
        assert await asyncio.wait_for(reader.read(), DEADLINE) == b""
        assert await asyncio.wait_for(r2.read(), DEADLINE) == b""
        assert proxy.stats.bytes_discarded >= 5
        # ... and new connections pass again.
        r3, w3 = await asyncio.open_connection("127.0.0.1", proxy.listen_port)
        assert await _roundtrip(r3, w3, b"after") == b"after"
        for w in (writer, w2, w3):
            w.close()


async def test_reject_closes_existing_and_new_connections() -> None:
    async with _echo_and_proxy() as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.listen_port)
        assert await _roundtrip(reader, writer, b"hi") == b"hi"
        proxy.set_mode(LinkMode.REJECT)
        assert await asyncio.wait_for(reader.read(), DEADLINE) == b""
        r2, w2 = await asyncio.open_connection("127.0.0.1", proxy.listen_port)
        assert await asyncio.wait_for(r2.read(), DEADLINE) == b""
        assert proxy.stats.connections_cut >= 2
        proxy.heal()
        r3, w3 = await asyncio.open_connection("127.0.0.1", proxy.listen_port)
        assert await _roundtrip(r3, w3, b"back") == b"back"
        for w in (writer, w2, w3):
            w.close()


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError):
        LinkProxy("a", "b", ("127.0.0.1", 1), 0)
    proxy = LinkProxy("a", "b", ("127.0.0.1", 1), 5000)
    with pytest.raises(ValueError):
        proxy.set_delay(-1)
    with pytest.raises(ValueError):
        proxy.set_mode("sideways")  # type: ignore[arg-type]


def test_routes_parse_and_refuse_malformed_entries() -> None:
    from phalanx_aio.chaos._serve_shim import parse_routes

    assert parse_routes("127.0.0.1:1=127.0.0.1:2, 127.0.0.1:3=127.0.0.1:4,") == {
        ("127.0.0.1", 1): ("127.0.0.1", 2),
        ("127.0.0.1", 3): ("127.0.0.1", 4),
    }
    assert parse_routes("") == {}
    for bad in ("127.0.0.1:1", "127.0.0.1:x=127.0.0.1:2", ":1=127.0.0.1:2"):
        with pytest.raises(ValueError):
            parse_routes(bad)


def test_cluster_commands_route_every_peer_through_its_own_proxy(tmp_path: pathlib.Path) -> None:
    from phalanx_aio.chaos.cluster import ChaosCluster

    c = ChaosCluster(3, tmp_path)
    assert c.ids == ("n1", "n2", "n3")
    assert len(c.links) == 6
    ports = {int(a.rpartition(":")[2]) for a in c.addresses.values()} | {
        p.listen_port for p in c.links.values()
    }
    assert len(ports) == 9  # every member and every proxy has its own port
    routes = dict(item.split("=") for item in c.routes("n1").split(","))
    assert routes == {
        c.addresses["n2"]: c.links[("n1", "n2")].address,
        c.addresses["n3"]: c.links[("n1", "n3")].address,
    }
    cmd = c.command("n1")
    assert cmd[cmd.index("--listen") + 1] == c.addresses["n1"]  # the real address in the configuration
    assert f"n2={c.addresses['n2']}" in cmd and "--join" not in cmd
    joined = c.command("n1", join="n3")
    assert joined[-2:] == ["--join", c.addresses["n3"]] and "--peer" not in joined
    with pytest.raises(ValueError):
        c.command("n9")
    with pytest.raises(ValueError):
        c.bridge(["n1"], "n1", ["n2"])
    for bad in ({"n": 0}, {"n": 3, "preset": "wan"}, {"n": 3, "status_timeout": 0}):
        with pytest.raises(ValueError):
            ChaosCluster(workdir=tmp_path, **bad)
