"""The client subcommands of ``phalanx-aio`` against a real three-node cluster on loopback.

``main()`` runs its own event loop, so each call runs in a thread while the cluster keeps
running on the test's loop.
"""

from __future__ import annotations

import asyncio

import pytest

from phalanx_aio._net import free_loopback_ports as free_ports
from phalanx_aio.cli.main import main
from tests.kv.cluster import CLUSTER, DEADLINE, KVCluster, kv_cluster

__all__ = ["kv_cluster"]  # the fixture, imported for use here


async def cli(c: KVCluster | None, *argv: str, endpoints: str | None = None) -> int:
    eps = endpoints if endpoints is not None else ",".join(c.addr.values()) if c else ""
    args = [*argv, "--endpoints", eps, "--cluster-id", CLUSTER, "--timeout", str(DEADLINE)]
    return await asyncio.to_thread(main, args)


async def test_members_change(kv_cluster: KVCluster, capsys: pytest.CaptureFixture[str]) -> None:
    """Several changes in one call: learners only (one entry), then a voter removed, which
    goes through a joint configuration and ends with two voters."""
    c = kv_cluster
    leader = await c.leader()
    a, b = (f"127.0.0.1:{port}" for port in free_ports(2))
    assert await cli(c, "members", "change", "--add-learner", f"n4={a}", "--add-learner", f"n5={b}") == 0
    out = capsys.readouterr().out.splitlines()
    assert f"n4 {a} learner" in out and f"n5 {b} learner" in out
    victim = next(n for n in c.ids if n != leader.id)
    assert await cli(c, "members", "change", "--remove", "n4", "--remove", "n5", "--remove", victim) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [f"{n} {c.addr[n]} voter" for n in sorted(c.ids) if n != victim]
    st = leader.status()
    assert victim not in st.voters and st.voters_outgoing == ()
    with pytest.raises(SystemExit) as exc:
        await cli(c, "members", "change", "--add", "bad-spec")
    assert exc.value.code == 2 and "expected ID=HOST:PORT" in capsys.readouterr().err


async def test_put_get_delete_cas(kv_cluster: KVCluster, capsys: pytest.CaptureFixture[str]) -> None:
    c = kv_cluster
    await c.leader()
    assert await cli(c, "put", "k", "v1") == 0
    assert capsys.readouterr().out == "OK\n"
    assert await cli(c, "get", "k") == 0
    assert capsys.readouterr().out == "v1\n"
    assert await cli(c, "cas", "k", "nope", "v2") == 3
    assert capsys.readouterr().out == "not swapped\n"
    assert await cli(c, "cas", "k", "v1", "v2") == 0
    assert capsys.readouterr().out == "swapped\n"
    assert await cli(c, "cas", "fresh", "x", "--expect-absent") == 0
    assert await cli(c, "cas", "fresh", "y", "--expect-absent") == 3
    capsys.readouterr()
    await c.until(lambda: all(sm.get(b"k") == b"v2" for sm in c.sms.values()))
    assert await cli(c, "get", "k", "--consistency", "stale") == 0
    assert capsys.readouterr().out == "v2\n"
    assert await cli(c, "delete", "k") == 0
    assert capsys.readouterr().out == "deleted\n"
    assert await cli(c, "delete", "k") == 0
    assert capsys.readouterr().out == "absent\n"
    assert await cli(c, "get", "k") == 3
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == "phalanx-aio: k: not found\n"
    leader = await c.leader()
    assert leader.state_machine.get(b"fresh") == b"x"  # type: ignore[attr-defined]


async def test_status_members_and_transfer(kv_cluster: KVCluster, capsys: pytest.CaptureFixture[str]) -> None:
    c = kv_cluster
    leader = await c.leader()
    await c.follower()
    assert await cli(c, "status") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["ID", "ADDRESS", "KIND", "ROLE", "TERM", "COMMIT", "APPLIED", "LAG"]
    rows = {r.split()[0]: r.split() for r in lines[1:]}
    assert set(rows) == {"n1", "n2", "n3"}
    assert rows[leader.id][3] == "leader" and rows[leader.id][1] == c.addr[leader.id]
    assert all(r[2] == "voter" and r[7].isdigit() for r in rows.values())

    assert await cli(c, "members", "list") == 0
    assert capsys.readouterr().out.splitlines() == [f"{n} {c.addr[n]} voter" for n in ("n1", "n2", "n3")]
    spare = f"127.0.0.1:{free_ports(1)[0]}"
    assert await cli(c, "members", "add", "n4", spare) == 0
    assert f"n4 {spare} learner" in capsys.readouterr().out.splitlines()
    assert await cli(c, "members", "remove", "n4") == 0
    assert "n4" not in capsys.readouterr().out
    args = ["put", "k", "v", "--endpoints", c.addr[leader.id], "--cluster-id", "other"]
    assert await asyncio.to_thread(main, args) == 1
    err = capsys.readouterr().err
    assert err.startswith("phalanx-aio: refused: WRONG_CLUSTER") and err.count("\n") == 1

    target = next(n for n in c.ids if n != leader.id)
    assert await cli(c, "transfer-leader", "--to", target) == 0
    assert capsys.readouterr().out == f"{target}\n"
    await c.until(lambda: c.nodes[target].is_leader)


async def test_unreachable_cluster_exits_1_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    dead = f"127.0.0.1:{free_ports(1)[0]}"
    args = ["get", "k", "--endpoints", dead, "--timeout", "0.5"]
    assert await asyncio.to_thread(main, args) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("phalanx-aio: not applied") and captured.err.count("\n") == 1
    assert "Traceback" not in captured.err


def test_endpoints_from_environment(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PHALANX_ENDPOINTS", f"127.0.0.1:{free_ports(1)[0]}")
    assert main(["status", "--timeout", "0.3"]) == 1  # reached the (dead) endpoint, not a usage error
    assert "not applied" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["get", "k", "--endpoints", ","], "--endpoints names no endpoint"),
        (["put", "k", "v", "--endpoints", "nohost"], "not host:port"),
        (["cas", "k", "only-one", "--endpoints", "h:1"], "cas takes KEY EXPECTED VALUE"),
        (["cas", "k", "a", "b", "--expect-absent", "--endpoints", "h:1"], "--expect-absent takes"),
    ],
)
def test_bad_arguments_exit_2(
    argv: list[str], message: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("PHALANX_ENDPOINTS", raising=False)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


@pytest.mark.parametrize(
    "argv",
    [
        ["put"],
        ["get", "k", "--consistency", "eventual"],
        ["get", "k", "-w", "yaml"],
        ["members"],
        ["members", "add", "n4"],
        ["status", "--timeout", "-1"],
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert "usage:" in capsys.readouterr().err


async def test_write_out_hex_and_standard_input(
    kv_cluster: KVCluster, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import io
    import json

    c = kv_cluster
    await c.leader()
    await c.follower()
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"\x00\xffbinary\n")))
    assert await cli(c, "put", "bin") == 0  # the value is standard input, byte for byte
    assert capsys.readouterr().out == "OK\n"
    assert await cli(c, "get", "bin", "--hex") == 0
    assert capsys.readouterr().out == "00ff62696e6172790a\n"
    assert await cli(c, "--hex", "put", "h", "c3a9 00") == 0
    capsys.readouterr()
    assert await cli(c, "get", "h", "-w", "json") == 0  # valid UTF-8: shown as text
    shown = json.loads(capsys.readouterr().out)
    assert (shown["value"], shown["encoding"]) == ("\u00e9\x00", "utf-8")
    assert await cli(c, "get", "h", "-w", "json", "--hex") == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown == {"key": "h", "found": True, "value": "c3a900", "encoding": "hex"}
    assert await cli(c, "get", "bin", "-w", "json") == 0  # not UTF-8: shown in hexadecimal
    assert json.loads(capsys.readouterr().out)["encoding"] == "hex"
    assert await cli(c, "put", "t", "text") == 0
    capsys.readouterr()
    assert await cli(c, "get", "t", "-w", "json") == 0
    assert json.loads(capsys.readouterr().out) == {
        "key": "t",
        "found": True,
        "value": "text",
        "encoding": "utf-8",
    }
    assert await cli(c, "get", "t", "-w", "table") == 0
    assert capsys.readouterr().out.splitlines() == ["KEY  VALUE", "t    text"]
    assert await cli(c, "get", "nope", "-w", "json") == 3
    assert json.loads(capsys.readouterr().out) == {"key": "nope", "found": False}

    assert await cli(c, "-w", "json", "members", "list") == 0
    members = json.loads(capsys.readouterr().out)
    assert members == [{"id": n, "address": c.addr[n], "kind": "voter"} for n in ("n1", "n2", "n3")]
    assert await cli(c, "members", "list", "-w", "table") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["ID", "ADDRESS", "KIND"] and len(lines) == 4

    assert await cli(c, "status", "-w", "json") == 0
    status = json.loads(capsys.readouterr().out)
    assert status["leader"] in c.ids and {m["id"] for m in status["members"]} == {"n1", "n2", "n3"}
    assert all(m["kind"] == "voter" and isinstance(m["term"], int) for m in status["members"])
    assert await cli(c, "status", "-w", "simple") == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert [r[0] for r in rows] == ["n1", "n2", "n3"] and all(len(r) == 8 for r in rows)
