"""``serve --join``: a new node joins a running cluster through one member, idempotently."""

from __future__ import annotations

import asyncio
import contextlib
import pathlib

import pytest

from phalanx_aio._net import free_loopback_ports
from phalanx_aio.cli.main import build_parser
from phalanx_aio.cli.serve import (
    JoinFailed,
    ServeSettings,
    join_contacts,
    resolve_members,
    resolve_settings,
    serve,
)
from phalanx_aio.errors import ConfigError
from phalanx_aio.kv.client import KVClient

DEADLINE = 30.0


async def _start(argv: list[str]) -> tuple[asyncio.Task[None], asyncio.Event]:
    settings = resolve_settings(build_parser().parse_args(["serve", *argv]), {})
    ready = asyncio.Event()
    task = asyncio.create_task(serve(settings, ready=ready))
    await asyncio.wait_for(ready.wait(), DEADLINE)
    return task, ready


async def _stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_join_adds_a_learner_then_promotes_it_and_survives_restart(tmp_path: pathlib.Path) -> None:
    ids = ["n1", "n2", "n3", "n4"]
    addr = {nid: f"127.0.0.1:{p}" for nid, p in zip(ids, free_loopback_ports(4), strict=True)}
    founders = ids[:3]
    tasks = {}
    for nid in founders:
        peers = [f"--peer={p}={addr[p]}" for p in founders if p != nid]
        tasks[nid], _ = await _start(
            ["--id", nid, "--listen", addr[nid], "--data-dir", str(tmp_path / nid), *peers, "--bootstrap"]
        )
    try:
        async with KVClient([addr[n] for n in founders], timeout=DEADLINE) as kv:
            for i in range(30):
                await kv.put(b"k%d" % i, b"v")
            join_args = ["--id", "n4", "--listen", addr["n4"], "--data-dir", str(tmp_path / "n4")]
            tasks["n4"], _ = await _start([*join_args, "--join", addr["n1"]])

            async def promoted() -> bool:
                return any(m.node_id == "n4" and not m.learner for m in await kv.members())

            for _ in range(int(DEADLINE / 0.2)):
                if await promoted():
                    break
                await asyncio.sleep(0.2)
            assert await promoted(), "n4 was not added and promoted"
            # Restarting the joiner with the same flags is harmless (idempotent).
            await _stop(tasks.pop("n4"))
            tasks["n4"], _ = await _start([*join_args, "--join", addr["n1"]])
            members = await kv.members()
            assert sorted(m.node_id for m in members) == ids
            await kv.put(b"after", b"restart")
            async with KVClient([addr["n4"]], timeout=DEADLINE) as kv4:
                # The restarted joiner catches up again from its own log and the leader.
                applied = 0
                for _ in range(int(DEADLINE / 0.2)):
                    applied = (await kv4.status(addr["n4"])).applied_index
                    if applied > 30:
                        break
                    await asyncio.sleep(0.2)
                assert applied > 30
    finally:
        for t in tasks.values():
            await _stop(t)


# --------------------------------------------------------------------------- --discover


def _settings(argv: list[str]) -> ServeSettings:
    return resolve_settings(build_parser().parse_args(["serve", *argv]), {})


async def test_discover_contacts_come_from_the_records_minus_our_own_address() -> None:
    asked: list[tuple[str, int]] = []

    async def resolver(name: str, port: int) -> list[str]:
        asked.append((name, port))
        return [f"10.0.0.{i}:{port}" for i in (1, 2, 3)]

    s = _settings(["--id", "n3", "--listen", "10.0.0.3:7000", "--data-dir", "d", "--discover", "members"])
    assert await join_contacts(s, resolver) == ["10.0.0.1:7000", "10.0.0.2:7000"]
    s = _settings(["--id", "n9", "--listen", "10.0.0.9:7000", "--data-dir", "d", "--discover", "m.svc:7100"])
    assert await join_contacts(s, resolver) == [f"10.0.0.{i}:7100" for i in (1, 2, 3)]
    assert asked == [("members", 7000), ("m.svc", 7100)]

    async def only_me(name: str, port: int) -> list[str]:
        return ["10.0.0.3:7000"]

    s = _settings(["--id", "n3", "--listen", "10.0.0.3:7000", "--data-dir", "d", "--discover", "members"])
    with pytest.raises(JoinFailed, match="found no other member"):
        await join_contacts(s, only_me)


async def test_resolve_members_uses_dns_and_reports_failures_clearly() -> None:
    found = await resolve_members("localhost", 7000)
    assert "127.0.0.1:7000" in found
    assert all(a.endswith(":7000") for a in found)
    with pytest.raises(JoinFailed, match="cannot resolve"):
        await resolve_members("no-such-host.invalid", 7000)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--discover", "a b"], "not a DNS name"),
        (["--discover", "name:99999"], "port in 1-65535"),
        (["--discover", "name", "--join", "127.0.0.1:7001"], "not both"),
        (["--discover", "name", "--peer", "n2=127.0.0.1:7002"], "give one"),
        (["--discover", "name", "--listen", "0.0.0.0:7001"], "not a wildcard"),
        (["--join", "127.0.0.1:7002", "--listen", "[::]:7001"], "not a wildcard"),
    ],
)
def test_bad_discover_settings_are_refused(extra: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _settings(["--id", "n1", "--listen", "127.0.0.1:7001", "--data-dir", "d", *extra])


async def test_discover_joins_through_dns_while_clients_keep_writing(tmp_path: pathlib.Path) -> None:
    """Members on 127.0.0.1-3 share one port; ``localhost`` resolves to 127.0.0.1, so the
    joiner on 127.0.0.4 finds the cluster through real DNS resolution, under write load."""
    (port,) = free_loopback_ports(1)
    ids = ["n1", "n2", "n3", "n4"]
    addr = {nid: f"127.0.0.{i}:{port}" for i, nid in enumerate(ids, start=1)}
    founders = ids[:3]
    tasks: dict[str, asyncio.Task[None]] = {}
    for nid in founders:
        peers = [f"--peer={p}={addr[p]}" for p in founders if p != nid]
        tasks[nid], _ = await _start(
            ["--id", nid, "--listen", addr[nid], "--data-dir", str(tmp_path / nid), *peers, "--bootstrap"]
        )
    acked: dict[bytes, bytes] = {}
    count = [0]
    stop = asyncio.Event()

    async def writer(w: int, kv: KVClient) -> None:
        i = 0
        while not stop.is_set():
            key, value = b"w%d-%d" % (w, i % 50), b"%d" % i
            await kv.put(key, value)  # any failure fails the test: nothing may be refused
            acked[key] = value
            count[0] += 1
            i += 1

    try:
        async with KVClient([addr[n] for n in founders], timeout=DEADLINE) as kv:
            writers = [asyncio.create_task(writer(w, kv)) for w in range(4)]
            while count[0] < 20:
                await asyncio.sleep(0.05)
            n4_args = ["--id", "n4", "--listen", addr["n4"], "--data-dir", str(tmp_path / "n4")]
            tasks["n4"], _ = await _start([*n4_args, "--discover", "localhost"])

            async def promoted() -> bool:
                return any(m.node_id == "n4" and not m.learner for m in await kv.members())

            for _ in range(int(DEADLINE / 0.2)):
                if await promoted() or any(w.done() for w in writers):
                    break
                await asyncio.sleep(0.2)
            assert await promoted(), "n4 was not added and promoted"
            at_promotion = count[0]
            for _ in range(int(DEADLINE / 0.05)):  # writes go on with n4 as a voter
                if count[0] >= at_promotion + 50 or any(w.done() for w in writers):
                    break
                await asyncio.sleep(0.05)
            stop.set()
            await asyncio.gather(*writers)  # re-raises any writer's failure
            commit = (await kv.status()).commit_index
        assert count[0] >= at_promotion + 50
        async with KVClient([addr["n4"]], timeout=DEADLINE) as kv4:
            for _ in range(int(DEADLINE / 0.2)):
                if (await kv4.status(addr["n4"])).applied_index >= commit:
                    break
                await asyncio.sleep(0.2)
            # n4's own applied state holds every acknowledged write.
            for key, value in acked.items():
                assert await kv4.get(key, consistency="stale") == value, key
    finally:
        stop.set()
        for t in tasks.values():
            await _stop(t)


def test_serve_exits_1_with_one_line_when_nothing_can_be_joined(tmp_path: pathlib.Path) -> None:
    import subprocess
    import sys

    (port,) = free_loopback_ports(1)
    base = ["--id", "n9", "--listen", f"127.0.0.1:{port}", "--data-dir", str(tmp_path / "d")]
    # (An unreachable --join contact takes the client's 15 s retry budget to give up: not run here.)
    out = subprocess.run(
        [sys.executable, "-m", "phalanx_aio.cli.main", "serve", *base, "--discover", "no-such-host.invalid"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1, out.stderr
    lines = [ln for ln in out.stderr.splitlines() if ln.startswith("phalanx-aio:")]
    assert len(lines) == 1 and "cannot resolve" in lines[0], out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize("value", ["12", "lots", "-5"])
def test_bad_max_request_bytes_is_refused(value: str) -> None:
    with pytest.raises(ConfigError, match="--max-request-bytes"):
        _settings(["--id=n1", "--listen=127.0.0.1:7001", "--data-dir=d", f"--max-request-bytes={value}"])


def test_max_request_bytes_from_flag_and_environment() -> None:
    base = ["--id", "n1", "--listen", "127.0.0.1:7001", "--data-dir", "d"]
    assert _settings(base).max_request_bytes == 4 << 20
    assert _settings([*base, "--max-request-bytes", "100000"]).max_request_bytes == 100_000
    args = build_parser().parse_args(["serve", *base])
    assert resolve_settings(args, {"PHALANX_MAX_REQUEST_BYTES": "65536"}).max_request_bytes == 65536


def test_every_timing_preset_is_accepted_and_others_refused() -> None:
    base = ["--id", "n1", "--listen", "127.0.0.1:7001", "--data-dir", "d"]
    for preset in ("lan", "global-mesh", "global-mesh-adaptive"):
        assert _settings([*base, "--preset", preset]).preset == preset
    args = build_parser().parse_args(["serve", *base])
    with pytest.raises(ConfigError, match="--preset must be one of"):
        resolve_settings(args, {"PHALANX_PRESET": "wan"})


def test_bootstrap_settings() -> None:
    base = ["--id", "n1", "--listen", "127.0.0.1:7001", "--data-dir", "d"]
    assert not _settings(base).bootstrap
    assert _settings([*base, "--bootstrap"]).bootstrap
    args = build_parser().parse_args(["serve", *base])
    assert resolve_settings(args, {"PHALANX_BOOTSTRAP": "true"}).bootstrap
    with pytest.raises(ConfigError, match="--bootstrap must be true or false"):
        resolve_settings(args, {"PHALANX_BOOTSTRAP": "maybe"})
    with pytest.raises(ConfigError, match="give one"):
        _settings([*base, "--bootstrap", "--join", "127.0.0.1:7002"])


async def test_a_node_without_a_store_needs_bootstrap_or_join(tmp_path: pathlib.Path) -> None:
    (port,) = free_loopback_ports(1)
    s = _settings(["--id", "n1", "--listen", f"127.0.0.1:{port}", "--data-dir", str(tmp_path)])
    with pytest.raises(ConfigError, match="holds no store for n1"):
        await serve(s)
    assert not (tmp_path / "n1.db").exists()


async def test_a_member_that_lost_its_data_is_refused_when_founded_again(tmp_path: pathlib.Path) -> None:
    """Wipe a member and restart it with --bootstrap: the leader knows it acknowledged
    entries, so serve refuses (naming --join), creates no store, and nothing is lost. A late
    founder that never acknowledged anything still starts."""
    import shutil

    ids = ["n1", "n2", "n3"]
    addr = {nid: f"127.0.0.1:{p}" for nid, p in zip(ids, free_loopback_ports(3), strict=True)}

    def argv(nid: str) -> list[str]:
        peers = [f"--peer={p}={addr[p]}" for p in ids if p != nid]
        return ["--id", nid, "--listen", addr[nid], "--data-dir", str(tmp_path / nid), *peers, "--bootstrap"]

    tasks = {}
    for nid in ids[:2]:  # n3 starts late, as a founder that never acknowledged anything
        tasks[nid], _ = await _start(argv(nid))
    try:
        async with KVClient([addr[n] for n in ids[:2]], timeout=DEADLINE) as kv:
            await kv.put(b"before", b"n3")
            tasks["n3"], _ = await _start(argv("n3"))
            for i in range(20):
                await kv.put(b"k%d" % i, b"v")
            leader = (await kv.status()).node_id
            victim = next(n for n in ids if n != leader)
            # The victim acknowledged those entries; now it loses its disk.
            for _ in range(int(DEADLINE / 0.1)):
                st = await kv.status()
                if all(m.match_index > 20 for m in st.members if m.node_id == victim):
                    break
                await asyncio.sleep(0.1)
            await _stop(tasks.pop(victim))
            shutil.rmtree(tmp_path / victim)
            settings = resolve_settings(build_parser().parse_args(["serve", *argv(victim)]), {})
            with pytest.raises(ConfigError, match=rf"refusing --bootstrap.*{victim}.*--join"):
                await asyncio.wait_for(serve(settings), DEADLINE)  # before: it founded again
            assert not (tmp_path / victim / f"{victim}.db").exists()
            # Nothing lost: the others hold every write and go on.
            assert [await kv.get(b"k%d" % i) for i in range(20)] == [b"v"] * 20
            await kv.put(b"after", b"refusal")
            assert await kv.get(b"after") == b"refusal"
    finally:
        for t in tasks.values():
            await _stop(t)
