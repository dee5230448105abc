"""``phalanx-aio serve`` settings and ``phalanx-aio demo`` end to end (short run)."""

from __future__ import annotations

import argparse
import asyncio
import io
import pathlib
import time

import pytest

from phalanx_aio.cli.demo import LocalCluster, run_demo
from phalanx_aio.cli.main import build_parser, main
from phalanx_aio.cli.serve import resolve_settings
from phalanx_aio.errors import ConfigError
from phalanx_aio.kv import KVClient


def _args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["serve", *argv])


def test_settings_merge_toml_env_and_flags(tmp_path: pathlib.Path) -> None:
    cfg = tmp_path / "n1.toml"
    cfg.write_text('id = "n1"\nlisten = "127.0.0.1:7001"\ndata_dir = "/d"\npeers = {n2 = "127.0.0.1:7002"}\n')
    env = {"PHALANX_PRESET": "global-mesh", "PHALANX_DATA_DIR": "/e"}
    s = resolve_settings(_args("--config", str(cfg), "--data-dir", "/f"), env)
    assert (s.id, s.listen, s.preset, str(s.data_dir)) == ("n1", "127.0.0.1:7001", "global-mesh", "/f")
    assert s.peers == {"n2": "127.0.0.1:7002"}
    s2 = resolve_settings(
        _args("--id", "a", "--listen", "h:1", "--data-dir", "x"), {"PHALANX_PEERS": "b=h:2,c=h:3"}
    )
    assert s2.peers == {"b": "h:2", "c": "h:3"}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--listen", "h:1", "--data-dir", "d"], "--id is required"),
        (["--id", "a", "--listen", "nope", "--data-dir", "d"], "not HOST:PORT"),
        (["--id", "a", "--listen", "h:1", "--data-dir", "d", "--peer", "bad"], "not ID=HOST:PORT"),
        (["--id", "a", "--listen", "h:1", "--data-dir", "d", "--peer", "a=h:2"], "own id"),
        (["--id", "a", "--listen", "h:1", "--data-dir", "d", "--tls-ca", "x"], "need --tls-cert"),
    ],
)
def test_bad_settings_are_one_line_errors(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        resolve_settings(_args(*argv), {})


def test_serve_bad_arguments_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--listen", "127.0.0.1:1"]) == 2
    err = capsys.readouterr().err
    assert "--id is required" in err and "Traceback" not in err


def test_bad_toml_is_reported(tmp_path: pathlib.Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text("id = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        resolve_settings(_args("--config", str(cfg)), {})


async def test_demo_kills_the_leader_and_loses_nothing() -> None:
    out = io.StringIO()
    res = await run_demo(seconds=4.0, clients=4, out=out)
    text = out.getvalue()
    assert res.ops > 0 and res.lost == 0 and res.verified == res.ops
    assert res.killed is not None and res.elections >= 2
    # No write sent after the kill can succeed before a follower's election timeout (the LAN
    # preset's 0.5 s at least, counted from a heartbeat at most 0.05 s before the kill). The
    # demo once counted replies the dying leader had already sent, and showed 0.00 s.
    assert res.failover_s is not None and res.failover_s >= 0.45
    assert "acknowledged writes lost" in text


async def test_a_removed_member_stops_with_status_2(tmp_path: pathlib.Path) -> None:
    """``serve`` stops once a member says this node was removed, and says how to come back."""
    cluster = LocalCluster(3, tmp_path)
    cluster.start_all()
    try:
        async with KVClient(list(cluster.addr.values()), timeout=20.0) as kv:
            await kv.put(b"k", b"v")  # waits for the processes to start and elect a leader
            leader = (await kv.status()).leader_id
            victim = next(nid for nid in cluster.ids if nid != leader)
            await kv.remove_member(victim)
            proc = cluster.procs[victim]
            deadline = time.monotonic() + 30.0
            while proc.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            assert proc.returncode == 2, (cluster.workdir / f"{victim}.log").read_text()[-2000:]
            log = (cluster.workdir / f"{victim}.log").read_text()
            assert f"{victim} was removed from cluster" in log and "--join" in log
            await kv.put(b"k", b"w")  # the others go on
            assert await kv.get(b"k") == b"w"
            assert all(cluster.procs[n].poll() is None for n in cluster.ids if n != victim)
    finally:
        cluster.stop_all()
