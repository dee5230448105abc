"""``Raft.compact(..., release=...)``: the dropped entries are handed over, not freed in the
call, so a driver can free a long log in steps; the log is the same either way."""

from __future__ import annotations

from phalanx_aio.core import Config, Entry
from tests.core.harness import Network

CFG = Config.lan(eager_commit=True)


def _cluster() -> Network:
    net = Network.bootstrap(3, CFG)
    net.campaign("1")
    net.propose("1", *[b"e%d" % i for i in range(50)])
    return net


def test_release_receives_the_dropped_entries_and_the_log_is_unchanged() -> None:
    net, ref = _cluster(), _cluster()
    raft = net["1"]
    applied = raft.log.applied
    before = list(raft.log.entries)
    cut = applied - 10
    handed: list[list[Entry]] = []
    snap = raft.compact(cut, b"state", release=handed.append)
    ref_snap = ref["1"].compact(cut, b"state")
    assert snap == ref_snap
    (old,) = handed
    assert old == before  # the whole former list: nothing was freed in the call
    assert raft.log.entries == ref["1"].log.entries == before[cut - before[0].index + 1 :]
    assert raft.log.entries is not old  # the log keeps only its own copy of the tail
    del old[-5:]  # freeing from the handed list does not touch the log
    assert raft.log.entries == ref["1"].log.entries
    assert raft.status().first_index == cut + 1
    net.propose("1", b"after")
    assert raft.log.entries[-1].data.endswith(b"after")
