"""The KV quota: writes that add data are refused past it, deletes go on, and the alarm clears
once deletes and compaction bring the data under it (issue 23)."""

from __future__ import annotations

import pathlib

import pytest

from phalanx_aio.kv import ErrorCode, KVService, KVStateMachine, QuotaExceeded
from phalanx_aio.kv.client import KVClient
from phalanx_aio.kv.state_machine import KVCommand, KVOp, encode_command
from tests.kv.cluster import KVCluster


def test_the_state_machine_counts_its_bytes_through_every_change_and_a_restore() -> None:
    sm = KVStateMachine()
    sm.apply(encode_command(KVCommand(KVOp.PUT, b"ab", b"1234")))
    sm.apply(encode_command(KVCommand(KVOp.PUT, b"ab", b"12")))  # overwritten: shorter
    sm.apply(encode_command(KVCommand(KVOp.CAS, b"c", b"xyz", None)))  # absent: set
    sm.apply(encode_command(KVCommand(KVOp.CAS, b"c", b"no", b"wrong")))  # not swapped
    assert sm.data_bytes == (2 + 2) + (1 + 3)
    sm.apply(encode_command(KVCommand(KVOp.DELETE, b"ab")))
    sm.apply(encode_command(KVCommand(KVOp.DELETE, b"missing")))
    assert sm.data_bytes == 4
    other = KVStateMachine()
    other.restore(sm.snapshot())
    assert other.data_bytes == 4


def test_a_negative_quota_is_refused() -> None:
    with pytest.raises(Exception, match="quota_bytes"):
        KVService(quota_bytes=-1)
    assert ErrorCode.QUOTA_EXCEEDED == 9
    assert issubclass(QuotaExceeded, Exception) and KVClient is not None


async def test_past_the_quota_writes_are_refused_deletes_go_on_and_the_alarm_clears(
    tmp_path: pathlib.Path,
) -> None:
    c = KVCluster(tmp_path, ["n1", "n2", "n3"])
    for nid in c.ids:
        await c.start(nid, snapshot_every=16)  # compaction soon frees the log's share
    try:
        for service in c.services.values():
            service.quota_bytes = 24 << 10
        async with KVClient(list(c.addr.values()), cluster_id="kv-test", timeout=20.0) as kv:
            written = []
            with pytest.raises(QuotaExceeded, match="quota exceeded"):
                for i in range(100):
                    await kv.put(b"k%d" % i, b"v" * 1024)
                    written.append(b"k%d" % i)
            assert 5 <= len(written) < 30
            leader = await c.leader()
            st = await kv.status(c.addr[leader.id])
            assert st.quota_alarm and st.quota_used_bytes >= 24 << 10
            assert await kv.get(written[0]) == b"v" * 1024  # reads go on
            for key in written:  # deletes go on, and free space
                await kv.delete(key)
            await c.until(lambda: not c.services[leader.id].quota_alarm)
            await kv.put(b"after", b"room again")
            assert not (await kv.status(c.addr[leader.id])).quota_alarm
    finally:
        await c.aclose()
