"""Three ``serve`` processes, each on its own 16 MiB filesystem, written until the disks are
full: no member stops for good (a snapshot that does not fit is skipped and tried again),
and once the filesystems have room again the cluster takes writes again, with every
acknowledged write still there. Needs root to mount tmpfs; skipped with the reason otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pathlib
import subprocess

import pytest

from phalanx_aio.cli.demo import LocalCluster
from phalanx_aio.errors import PhalanxError
from phalanx_aio.kv.client import KVClient


def _mount(path: pathlib.Path, size: str, remount: bool = False) -> str | None:
    """Mount (or resize) a tmpfs at ``path``; the reason it could not, or None."""
    opts = f"remount,size={size}" if remount else f"size={size}"
    try:
        res = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return f"mount failed: {exc}"
    return None if res.returncode == 0 else f"mount failed: {res.stderr.strip() or res.returncode}"


@pytest.fixture
def small_disks(tmp_path: pathlib.Path):  # type: ignore[no-untyped-def]
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    cluster = LocalCluster(3, tmp_path)
    mounted = []
    try:
        for nid in cluster.ids:
            d = tmp_path / nid
            d.mkdir()
            why = _mount(d, "16m")
            if why is not None:
                pytest.skip(why)
            mounted.append(d)
        yield cluster
    finally:
        cluster.stop_all()
        for d in mounted:
            subprocess.run(["umount", "-l", str(d)], capture_output=True, timeout=10)


async def test_full_disks_stop_no_member_and_writes_resume_once_there_is_room(
    small_disks: LocalCluster,
) -> None:
    cluster = small_disks
    cluster.start_all()
    value = b"v" * 1024
    acknowledged: list[bytes] = []
    async with KVClient(list(cluster.addr.values()), timeout=20.0) as kv:
        await kv.put(b"first", b"x")  # the cluster is up
        acknowledged.append(b"first")
        kv.timeout = 3.0
        failures = 0
        n = 0

        async def writer(w: int) -> None:
            nonlocal failures, n
            while failures == 0:
                key = b"k%d-%d" % (w, n)
                n += 1
                try:
                    await kv.put(key, value)
                except PhalanxError:
                    failures += 1
                    return
                acknowledged.append(key)

        await asyncio.wait_for(asyncio.gather(*(writer(w) for w in range(32))), 120)
        assert len(acknowledged) > 5000  # the disks did fill up
        await asyncio.sleep(2.0)  # let every member meet its full disk (snapshots included)
        assert [nid for nid in cluster.ids if cluster.procs[nid].poll() is not None] == []
        for nid in cluster.ids:
            assert _mount(cluster.workdir / nid, "256m", remount=True) is None
        kv.timeout = 30.0
        await kv.put(b"after", b"room again")
        for key in (acknowledged[0], acknowledged[len(acknowledged) // 2], acknowledged[-1]):
            assert await kv.get(key) is not None
        # Every member is back: each one answers a write through it as leader in turn.
        for nid in cluster.ids:
            with contextlib.suppress(PhalanxError):
                await kv.transfer_leader(nid)
            await kv.put(b"via-" + nid.encode(), b"x")
    logs = "".join((cluster.workdir / f"{nid}.log").read_text() for nid in cluster.ids)
    assert "the node's loop failed" not in logs
    # The path that used to stop members: a snapshot (over 10 MB by then) did not fit.
    assert "could not store the snapshot" in logs and "stored the snapshot at index" in logs
