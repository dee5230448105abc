"""A harness in the shape of the MIT 6.5840 Raft lab's ``config.go``, over the simulator.

Scenario names, server counts and bounds follow ``shared/reference/RAFT_TESTS.md``; the code is
our own. Time is simulated milliseconds; nothing sleeps.
"""

from __future__ import annotations

from collections import defaultdict

from phalanx_aio.core import Config
from phalanx_aio.core.raft import Role
from phalanx_aio.errors import PhalanxError
from phalanx_aio.sim import Cluster, NetworkOptions, RaftFactory, UniformLatency


class Lab:
    """N servers; ``connected`` mirrors the lab's notion of a server being on the network."""

    def __init__(
        self,
        n: int,
        seed: int,
        *,
        unreliable: bool = False,
        snapshot_every: int = 0,
        config: Config | None = None,
        raft_factory: RaftFactory | None = None,
    ) -> None:
        self.ids = [f"s{i}" for i in range(n)]
        net = NetworkOptions(latency=UniformLatency(0.5, 5.0))
        # The lab allows at most 10 heartbeats per second: 2 ticks of 50 ms.
        cfg = config or Config.lan(heartbeat_ticks=2)
        self.c = Cluster(
            self.ids,
            seed=seed,
            config=cfg,
            network=net,
            snapshot_every=snapshot_every,
            raft_factory=raft_factory,
        )
        self.connected = set(self.ids)
        self.set_unreliable(unreliable)

    # -- network ---------------------------------------------------------------------------

    def set_unreliable(self, on: bool) -> None:
        """The lab's unreliable network: 0-27 ms delays and 10% of messages dropped."""
        net = self.c.net
        net.latency = UniformLatency(0.5, 27.0) if on else UniformLatency(0.5, 5.0)
        net.loss = 0.1 if on else 0.0

    def set_long_reordering(self, on: bool) -> None:
        """About two thirds of messages held back 200 + 0-2000 ms."""
        self.c.net.reorder = 0.66 if on else 0.0
        self.c.net.reorder_ms = (200.0, 2200.0)

    def disconnect(self, sid: str) -> None:
        self.connected.discard(sid)
        self.c.disconnect(sid)

    def connect(self, sid: str) -> None:
        self.connected.add(sid)
        self.c.connect(sid)
        for other in self.ids:
            if other not in self.connected:
                self.c.net.isolate(other, [sid])

    def crash(self, sid: str) -> None:
        self.c.crash(sid)

    def start(self, sid: str) -> None:
        self.c.restart(sid)

    # -- checks ----------------------------------------------------------------------------

    def run(self, ms: float) -> None:
        self.c.run_for(ms)

    def leaders_by_term(self) -> dict[int, list[str]]:
        out: dict[int, list[str]] = defaultdict(list)
        for sid in self.connected:
            core = self.c.nodes[sid].core
            if core is not None and core.role is Role.LEADER:
                out[core.term].append(sid)
        return out

    def check_one_leader(self) -> str:
        """Poll up to 10 times 500 ms apart; fail on two leaders in a term or none at all."""
        for _ in range(10):
            self.run(500)
            by_term = self.leaders_by_term()
            for term, ls in by_term.items():
                assert len(ls) == 1, f"term {term} has {len(ls)} (>1) leaders: {ls}"
            if by_term:
                return by_term[max(by_term)][0]
        raise AssertionError("expected one leader, got none")

    def check_no_leader(self) -> None:
        assert not self.leaders_by_term(), (
            f"expected no leader among connected, got {dict(self.leaders_by_term())}"
        )

    def check_terms(self) -> int:
        terms = {self.c.nodes[s].core.term for s in self.connected if self.c.nodes[s].core is not None}  # type: ignore[union-attr]
        assert len(terms) == 1, f"servers disagree on term: {terms}"
        return terms.pop()

    def n_committed(self, index: int) -> tuple[int, bytes | None]:
        """How many servers applied ``index``, and the command (all must agree)."""
        count, cmd = 0, None
        for sid in self.ids:
            node = self.c.nodes[sid]
            got = node.applied_cmds.get(index)
            if got is None:
                if node.applied_index >= index and node.store.snapshot.meta.index >= index:
                    count += 1  # covered by an installed snapshot; safety is the checker's job
                continue
            assert cmd is None or cmd == got, (
                f"servers applied different commands at {index}: {cmd!r} {got!r}"
            )
            count, cmd = count + 1, got
        return count, cmd

    def start_cmd(self, sid: str, cmd: bytes) -> tuple[int, int] | None:
        """The lab's Start(): only a leader accepts; returns (term, index) or None."""
        node = self.c.nodes[sid]
        if node.core is None or node.core.role is not Role.LEADER:
            return None
        try:
            return self.c.propose(sid, cmd)
        except PhalanxError:
            return None

    def one(self, cmd: bytes, expected: int, retry: bool = True, timeout_ms: float = 10_000) -> int:
        """Submit ``cmd`` through any leader until ``expected`` servers applied it (10 s)."""
        start = self.c.now
        while self.c.now - start < timeout_ms:
            index = None
            for sid in self.ids:
                if sid in self.connected:
                    got = self.start_cmd(sid, cmd)
                    if got is not None:
                        index = got[1]
                        break
            if index is not None:
                t0 = self.c.now
                while self.c.now - t0 < 2000:
                    n, c = self.n_committed(index)
                    if n >= expected and c == cmd:
                        return index
                    self.run(20)
                if not retry:
                    raise AssertionError(f"one({cmd!r}) failed to reach agreement")
            else:
                self.run(50)
        raise AssertionError(f"one({cmd!r}) failed to reach agreement in {timeout_ms} ms")

    def rpc_count(self) -> int:
        return sum(self.c.msg_counts.values())
