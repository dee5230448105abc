"""Seeded random runs: a workload and a fault schedule over a :class:`Cluster`, then a liveness
phase that heals everything and demands convergence, then an availability phase that demands
answers within a bound and no disruptive elections.

``run(SimOptions(seed=...))`` is what ``phalanx-aio sim`` and the seed-sweep tests call. With
``swarm=True`` the seed also chooses the configuration (see :func:`resolve`). A violation
propagates as :class:`~phalanx_aio.sim.checker.SafetyViolation` or
:class:`~phalanx_aio.sim.checker.LivenessFailure` with the seed and the command that replays
it attached (:func:`replay_command`); so does any exception raised inside a core.
"""

from __future__ import annotations

import contextlib
import random
from collections import Counter

from phalanx_aio.core.membership import ConfChange, ConfChangeType
from phalanx_aio.core.raft import Role
from phalanx_aio.core.ready import Ready
from phalanx_aio.core.types import ConfState, Entry
from phalanx_aio.errors import PhalanxError
from phalanx_aio.sim.checker import LivenessFailure
from phalanx_aio.sim.cluster import Cluster, SimNode
from phalanx_aio.sim.network import NetworkOptions, RegionLatency, UniformLatency
from phalanx_aio.sim.options import (
    _DISK_PROFILES,
    _TRIGGERS,
    SimOptions,
    SimResult,
    describe,
    replay_command,
    resolve,
)

__all__ = ["LivenessFailure", "SimOptions", "SimResult", "describe", "replay_command", "resolve", "run"]


class _Run:
    def __init__(self, opts: SimOptions) -> None:
        self.opts = opts
        ids = [f"n{i + 1}" for i in range(opts.nodes)]
        spares = [f"n{opts.nodes + i + 1}" for i in range(3)] if opts.membership or opts.joint_changes else []
        latency = opts.mesh if opts.mesh is not None else UniformLatency(*opts.latency_ms)
        net = NetworkOptions(latency=latency)
        if opts.faults:
            net.loss, net.duplicate, net.reorder = opts.loss, opts.duplicate, opts.reorder
            net.reslice = opts.reslice
        self.c = Cluster(
            ids,
            seed=opts.seed,
            config=opts.config,
            network=net,
            raft_factory=opts.raft_factory,
            snapshot_every=opts.snapshot_every,
            spare_ids=spares,
            background_writes=opts.background_writes,
        )
        c = self.c
        c.max_events = opts.max_events or opts.steps + 400_000
        if opts.clock is not None:
            c.clock = opts.clock
            c.deadline = opts.clock() + opts.wall_seconds
        for n in c.nodes.values():
            n.disk_ms = c.rng.choice(_DISK_PROFILES) if opts.swarm else opts.disk_ms
        self.spares = spares
        self.marker = b"liveness-%d" % opts.seed
        self.marker_seen: set[str] = set()
        self.rng = c.rng
        self.joint_rng = random.Random(f"phalanx-joint:{opts.seed}") if opts.joint_changes else None
        self.faults: Counter[str] = Counter()
        self.pending_writes: dict[bytes, str] = {}
        self.pending_reads: dict[bytes, int] = {}
        self.writes_acked = 0
        self.reads_checked = 0
        self.op_seq = 0
        self.active = True
        self.armed: list[tuple[str, str]] = []
        """Triggered faults waiting for their moment: (moment, action)."""
        self.last_groups: list[list[str]] = []
        self.cut_seq = 0
        self.probes: dict[bytes, float] = {}
        """Availability phase: operations not yet answered -> when they were issued."""
        self.probe_index: dict[bytes, int] = {}
        """Watched writes applied somewhere -> their index."""
        self.probe_count = 0
        self.probe_bound = 0.0
        if opts.setup is not None:
            opts.setup(c)
        c.on_apply.append(self._applied)
        c.on_read.append(self._read)
        c.on_dropped.append(self._dropped)
        c.on_install.append(self._installed)
        if opts.triggers:
            c.on_commit.append(self._on_commit)
            c.on_leader.append(self._on_leader)
            c.on_campaign.append(self._on_campaign)
            c.on_write_behind.append(self._on_write_behind)
            c.crash_before_send.append(self._crash_before_send)

    # -- workload --------------------------------------------------------------------------

    def _applied(self, node: SimNode, e: Entry) -> None:
        if e.data == self.marker:
            self.marker_seen.add(node.id)
        if e.data in self.probes:
            self.probe_index[e.data] = e.index
        who = self.pending_writes.get(e.data)
        if who == node.id:
            del self.pending_writes[e.data]
            self.writes_acked += 1
            chk = self.c.checker
            if chk is not None and e.index > chk.acked_index:
                chk.acked_index = e.index
            self._answered(e.data)

    def _read(self, node: SimNode, ctx: bytes, index: int) -> None:
        needed = self.pending_reads.pop(ctx, None)
        if needed is not None and self.c.checker is not None:
            self.reads_checked += 1
            self.c.checker.on_read(node.id, index, needed)
        self._answered(ctx)

    def _installed(self, node: SimNode, index: int) -> None:
        """A snapshot answers the node's watched writes it covers (applied elsewhere)."""
        for key, at in list(self.probe_index.items()):
            if at <= index and self.pending_writes.get(key) == node.id:
                del self.pending_writes[key]
                self._answered(key)

    def _dropped(self, node: SimNode, ctx: bytes) -> None:
        self.pending_reads.pop(ctx, None)
        if ctx in self.probes:
            raise LivenessFailure(
                f"availability: {node.id} dropped read {ctx.decode()} while the cluster was healthy"
            )

    def _exp(self, mean: float) -> float:
        return self.rng.expovariate(1.0 / mean)

    def _client_op(self) -> None:
        if not self.active:
            return
        self.c.call_at(self.c.now + self._exp(self.opts.op_interval_ms), self._client_op)
        self._issue(self.rng.random() < self.opts.read_fraction)

    def _issue(self, read: bool, node: SimNode | None = None, watch: str = "") -> bytes | None:
        """One client operation at ``node`` (default: a random member that is up); returns
        its key (a read's context or a write's data), or None if it was refused at once.
        With ``watch``, it must be answered within the availability bound."""
        if node is None:
            if watch:  # healthy: the members of the leader's configuration
                leader = self.c.leader()
                members = leader.core.conf.members() if leader is not None and leader.core else set()
                live = [n for n in self.c.live() if n.id in members]
            else:
                live = [n for n in self.c.live() if n.core is not None and n.core.conf.is_member(n.id)]
            if not live:
                return None
            node = self.rng.choice(live)
        self.op_seq += 1
        key = b"%s%d" % (b"r" if read else b"w", self.op_seq)
        if watch:
            self.probes[key] = self.c.now  # before the call: it may be answered inside it
        try:
            if read:
                chk = self.c.checker
                # The read must reflect every write acknowledged before it began, and every
                # entry a leader had committed by then (a correct ReadIndex or lease read
                # covers both; the second catches a stale leader before any write is acked).
                self.pending_reads[key] = max(chk.acked_index, chk.committed[0]) if chk is not None else 0
                self.c.read_index(node.id, key)
            else:
                self.pending_writes[key] = node.id
                self.c.propose(node.id, key)
        except PhalanxError as exc:
            if watch:
                raise LivenessFailure(
                    f"availability: {watch} was refused by {node.id}: {exc} ({self.opts.command()})"
                ) from exc
            return None
        return key

    # -- faults ----------------------------------------------------------------------------

    def _fault(self) -> None:
        if not self.active:
            return
        self.c.call_at(self.c.now + self._exp(self.opts.fault_interval_ms), self._fault)
        c, rng, opts = self.c, self.rng, self.opts
        members = [n for n in c.nodes.values() if n.incarnation > 0]
        down = [n.id for n in members if n.core is None]
        up = [n.id for n in members if n.core is not None]
        choices = ["heal", "loss"]
        if opts.crash:
            choices += ["crash", "restart", "restart"]
        if opts.partitions:
            choices += ["partition", "isolate_leader", "heal"]
        if opts.membership or opts.joint_changes:
            choices += ["member", "member"]
        if opts.transfers:
            choices += ["transfer"]
        if opts.triggers:
            choices += ["arm", "arm", "arm"]
        kind = rng.choice(choices)
        if kind == "crash" and self._may_crash() and up:
            victim = rng.choice(up)
            if rng.random() < 0.5 and (leader := c.leader()) is not None:
                victim = leader.id
            c.crash(victim)
        elif kind == "restart" and down:
            c.restart(rng.choice(down))
        elif kind == "partition":
            ids = sorted(n.id for n in members)
            rng.shuffle(ids)
            cut = rng.randrange(1, len(ids))
            self._partition([ids[:cut], ids[cut:]])
        elif kind == "isolate_leader" and (leader := c.leader()) is not None:
            self._partition([[leader.id], [n.id for n in members if n.id != leader.id]])
        elif kind == "heal":
            if self.last_groups and opts.triggers and rng.random() < 0.5:
                kind = "repartition"
                self._repartition()
            else:
                c.heal()
                self.last_groups = []
        elif kind == "loss":
            c.net.loss = rng.choice([0.0, opts.loss, 0.1, 0.3])
        elif kind == "member":
            self._membership()
        elif kind == "transfer":
            self._transfer()
        elif kind == "arm":
            self.armed.append(rng.choice(_TRIGGERS))
        else:
            return
        self.faults[kind] += 1

    def _may_crash(self) -> bool:
        members = [n for n in self.c.nodes.values() if n.incarnation > 0]
        down = sum(1 for n in members if n.core is None)
        return down < (self.opts.nodes - 1) // 2 + 1

    def _partition(self, groups: list[list[str]]) -> None:
        """Cut the network into ``groups``, and heal it after a while unless another cut
        comes first: from a blip to several election timeouts, so that some cuts end before
        anyone notices and others outlast a new leader's election."""
        c = self.c
        c.heal()
        c.partition(groups)
        self.last_groups = groups
        self.cut_seq += 1
        cut = self.cut_seq
        timeout_ms = self.opts.config.election_ticks * c.tick_ms

        def heal() -> None:
            if self.cut_seq == cut and self.active:
                c.heal()
                self.last_groups = []

        c.call_at(c.now + timeout_ms * self.rng.choice((0.3, 1.0, 2.0, 4.0)) * self.rng.random(), heal)

    def _repartition(self) -> None:
        """Heal into a different majority: the previous minority plus nodes of the previous
        majority other than the leader form the new majority; the leader and the rest are
        cut off from it (the Raft paper's Figure 8 needs such a sequence)."""
        groups = sorted(self.last_groups, key=len)
        everyone = [n for g in groups for n in g]
        leader = self.c.leader()
        need = len(everyone) // 2 + 1
        small = list(groups[0])[:need]
        pool = [n for g in groups[1:] for n in g if leader is None or n != leader.id]
        self.rng.shuffle(pool)
        majority = small + pool[: need - len(small)]
        rest = [n for n in everyone if n not in majority]
        if majority and rest:
            self._partition([majority, rest])

    def _arm_fires(self, moment: str) -> str | None:
        for i, (m, action) in enumerate(self.armed):
            if m == moment:
                del self.armed[i]
                return action
        return None

    def _on_commit(self, node: SimNode, index: int) -> None:
        if self.active and (action := self._arm_fires("commit")) is not None:
            self._strike(node.id, action, 0.0)

    def _crash_before_send(self, node: SimNode, rd: Ready) -> bool:
        """Crash a leader in the middle of its loop, its ``Ready`` persisted but not sent, at
        one of two moments: just elected (its first appends, the §8 no-op, never leave), or
        as its commit index moves (its followers hold the entries, not the news)."""
        core = node.core
        if not self.active or core is None or core.role is not Role.LEADER or not self.armed:
            return False
        if node.led_term != core.term:
            moment = ("elected_unsent", "crash")
        elif rd.hard_state is not None and rd.hard_state.commit > node.commit_seen:
            moment = ("commit_unsent", "crash")
        else:
            return False
        if moment not in self.armed or not self._may_crash():
            return False
        self.armed.remove(moment)
        self.faults[f"triggered_{moment[0]}_crash"] += 1
        return True

    def _on_leader(self, node: SimNode, term: int) -> None:
        if self.active and (action := self._arm_fires("leader")) is not None:
            # Soon after it is elected: its first appends have reached some followers.
            self._strike(node.id, action, self.rng.uniform(0.0, 2 * self.opts.latency_ms[1]))

    def _on_write_behind(self, node: SimNode) -> None:
        if self.active and (action := self._arm_fires("write")) is not None:
            # Between send and persist: its appends are out, its own write is not done yet.
            self._strike(node.id, action, self.rng.uniform(0.0, node.disk_ms[0]))

    def _on_campaign(self, node: SimNode, term: int) -> None:
        if self.active and (action := self._arm_fires("campaign")) is not None:
            voters = sorted(node.core.conf.voters) if node.core is not None else [node.id]
            self._strike(self.rng.choice(voters), action, self.rng.uniform(0.0, self.opts.latency_ms[1]))

    def _strike(self, nid: str, action: str, delay: float) -> None:
        c = self.c

        def act() -> None:
            node = c.nodes.get(nid)
            if node is None or node.core is None or not self.active:
                return
            if action == "isolate":
                self._partition([[nid], [n for n in c.nodes if n != nid]])
            elif action == "restart":
                c.crash(nid)
                c.restart(nid)
            elif self._may_crash():
                c.crash(nid)
            self.faults[f"triggered_{action}"] += 1

        c.call_at(c.now + delay, act)

    def _membership(self, again: bool = True) -> None:
        """One membership change on the leader: promote a caught-up learner, remove a voter
        or add a spare as a learner. Sometimes a second one at once (any learner promoted,
        caught up or not, or a voter removed), which the leader must refuse while the first
        is uncommitted (single-server changes, thesis §4.1)."""
        c, rng = self.c, self.rng
        leader = c.leader()
        if leader is None or leader.core is None:
            return
        conf = leader.core.conf
        split = again and self.active and self._arm_fires("conf") is not None
        if split:
            # Just before the leader changes membership, split the cluster: the leader, the
            # learners it may promote and fewer than half of the other voters on one side (a
            # change must never let both sides elect and commit: single-server changes,
            # thesis §4.1).
            others = sorted(v for v in conf.voters if v != leader.id)
            rng.shuffle(others)
            side = [leader.id, *sorted(conf.learners), *others[: rng.randrange(len(conf.voters) // 2)]]
            self._partition([side, [n.id for n in c.nodes.values() if n.id not in side]])
            self.faults["triggered_split"] += 1
        try:
            joint = self.joint_rng
            if (
                again
                and not split
                and joint is not None
                and joint.random() < 0.35
                and self._joint_change(leader.id, conf, joint)
            ):
                pass  # several voters at once
            elif not again and conf.learners and rng.random() < 0.5:
                c.conf_change(
                    leader.id, ConfChange(ConfChangeType.PROMOTE, rng.choice(sorted(conf.learners)))
                )
            elif not again and len(conf.voters) > 3:
                victim = rng.choice(sorted(conf.voters))
                c.conf_change(leader.id, ConfChange(ConfChangeType.REMOVE, victim))
            elif conf.learners:
                nid = sorted(conf.learners)[0]
                pr = leader.core.prs.get(nid)
                if pr is not None and pr.match >= leader.core.log.committed:
                    c.conf_change(leader.id, ConfChange(ConfChangeType.PROMOTE, nid))
            elif len(conf.voters) > 3 and rng.random() < 0.5:
                victim = rng.choice(sorted(conf.voters))
                c.conf_change(leader.id, ConfChange(ConfChangeType.REMOVE, victim))
            elif self.spares:
                nid = self.spares.pop(0)
                c.conf_change(leader.id, ConfChange(ConfChangeType.ADD_LEARNER, nid))
            else:
                return
        except PhalanxError:
            return
        if again and rng.random() < (0.9 if self.faults["triggered_split"] else 0.3):
            c.call_at(c.now, lambda: self._membership(again=False))

    def _joint_change(self, leader: str, conf: ConfState, rng: random.Random) -> bool:
        """Several voters changed at once (joint consensus, thesis §4.3): a learner replaces a
        voter, two learners replace two voters, or two voters leave. Any voter may go, the
        leader included (it then leads until C_new commits and steps down). False if the
        configuration allows none of these."""
        c = self.c
        voters, learners = sorted(conf.voters), sorted(conf.learners)
        options: list[list[ConfChange]] = []
        if learners:
            options.append(
                [ConfChange(ConfChangeType.PROMOTE, rng.choice(learners)), _remove(rng.choice(voters))]
            )
        if len(learners) >= 2 and len(voters) >= 3:
            options.append(
                [ConfChange(ConfChangeType.PROMOTE, n) for n in rng.sample(learners, 2)]
                + [_remove(n) for n in rng.sample(voters, 2)]
            )
        if len(voters) > 4:
            options.append([_remove(n) for n in rng.sample(voters, 2)])
        if not options:
            return False
        c.conf_change(leader, rng.choice(options))
        self.faults["joint_change"] += 1
        return True

    def _transfer(self) -> bool:
        """Ask the leader to hand over to a random other voter; True if it was asked."""
        leader = self.c.leader()
        if leader is None or leader.core is None:
            return False
        others = sorted(v for v in leader.core.conf.voters if v != leader.id)
        if not others:
            return False
        try:
            self.c.transfer(leader.id, self.rng.choice(others))
        except PhalanxError:
            return False
        return True

    # -- phases ----------------------------------------------------------------------------

    def run(self) -> SimResult:
        c, opts = self.c, self.opts
        c.call_at(0.0, self._client_op)
        if opts.faults:
            c.call_at(self._exp(opts.fault_interval_ms), self._fault)
        while c.events < opts.steps and c.step():
            pass
        # Liveness: heal everything, restart everyone, and demand convergence.
        self.active = False
        self.armed = []
        c.heal()
        c.net.loss = c.net.duplicate = c.net.reorder = 0.0
        for n in list(c.nodes.values()):
            if n.core is None and n.incarnation > 0:
                c.restart(n.id)
        healed_at = c.now
        self._converge(healed_at + opts.liveness_ms, "after healing")
        converge_ms = c.now - healed_at
        if opts.availability:
            self._availability()
        if c.writes_lost:
            self.faults["background_writes_lost"] = c.writes_lost
        chk = c.checker
        return SimResult(
            seed=opts.seed,
            events=c.events,
            sim_ms=c.now,
            elections=c.elections,
            max_term=max((n.store.hard_state.term for n in c.nodes.values()), default=0),
            committed=max(n.applied_index for n in c.nodes.values()),
            writes_acked=self.writes_acked,
            reads_checked=self.reads_checked,
            faults=self.faults,
            messages=sum(c.msg_counts.values()),
            checks=chk.checks if chk is not None else 0,
            trace_hash=c.trace_hash,
            converge_ms=converge_ms,
            setup=describe(opts),
            probes=self.probe_count,
        )

    def _converge(self, deadline: float, when: str) -> None:
        """Demand a leader, then the marker entry applied everywhere, before ``deadline``."""
        c, opts = self.c, self.opts
        if not c.run_until(self._has_leader, deadline - c.now):
            raise LivenessFailure(f"no leader {opts.liveness_ms:.0f} ms {when} ({opts.command()})")
        marker = self.marker
        self.marker_seen = set()
        while not self._converged(marker):
            leader = c.leader()
            if leader is not None:
                with contextlib.suppress(PhalanxError):
                    c.propose(leader.id, marker)
            converged = c.run_until(lambda: self._converged(marker), min(2000.0, deadline - c.now))
            if not converged and c.now >= deadline:
                raise LivenessFailure(f"no convergence {opts.liveness_ms:.0f} ms {when} ({opts.command()})")

    def _has_leader(self) -> bool:
        leader = self.c.leader()
        return leader is not None and leader.core is not None and leader.core.log.committed > 0

    def _converged(self, marker: bytes) -> bool:
        leader = self.c.leader()
        if leader is None or leader.core is None:
            return False
        core = leader.core
        members = core.conf.members()
        target = core.log.committed
        if leader.id not in self.marker_seen:
            return False
        for nid in members:
            n = self.c.nodes.get(nid)
            if n is None or n.core is None or n.applied_index < target:
                return False
            if n.core.role is not Role.LEADER and n.core.leader != leader.id:
                return False
        return True

    # -- availability ----------------------------------------------------------------------

    def _availability(self) -> None:
        """A healthy cluster must answer every read and write within a bound, keep its leader
        and term while it does, and after a failover (a transfer, or the leader crashing)
        answer a read at the new leader before any write."""
        c, opts, rng = self.c, self.opts, self.rng
        cfg = opts.config
        election_ms = 2 * cfg.election_ticks * c.tick_ms
        slow_disk = max(n.disk_ms[1] for n in c.nodes.values())
        self.probe_bound = 2 * election_ms + 4 * slow_disk + 8 * self._max_latency()
        # Removed members are stopped, as their operator would (without pre-vote or check
        # quorum, a removed node that still runs disrupts the cluster: thesis §4.2.3).
        leader = c.leader()
        assert leader is not None and leader.core is not None
        for n in c.live():
            if not leader.core.conf.is_member(n.id):
                c.crash(n.id)
                self.faults["stopped_removed"] += 1
        self._stable_window(3 * election_ms)
        # Failover, then a read before any write: a new leader must be able to serve it.
        old = c.leader()
        assert old is not None and old.core is not None
        old_term = old.core.term
        crashed = None
        if not (opts.transfers and rng.random() < 0.5 and self._transfer()):
            crashed = old.id
            c.crash(old.id)
        self.faults["failover"] += 1

        def new_leader() -> bool:
            leader = c.leader()
            return leader is not None and leader.core is not None and leader.core.term > old_term

        if not c.run_until(new_leader, 4 * election_ms + opts.liveness_ms / 4):
            raise LivenessFailure(f"availability: no new leader after a failover ({opts.command()})")
        leader = c.leader()
        assert leader is not None
        what = "the first read after a failover"
        self._issue(True, leader, watch=what)
        self._settle(what)
        if crashed is not None:
            c.restart(crashed)
        self._converge(c.now + opts.liveness_ms, "after a failover")
        self._stable_window(3 * election_ms)

    def _max_latency(self) -> float:
        lat = self.c.net.latency
        if isinstance(lat, UniformLatency):
            return lat.high_ms
        if isinstance(lat, RegionLatency):
            return max(max(row.values()) for row in lat.rtt_ms.values()) * 4
        return 10.0

    def _stable_window(self, ms: float) -> None:
        """Run a read and write workload for ``ms``: each must be answered within the bound,
        and no node may start an election (the leader and every term stay as they are)."""
        c = self.c
        leader = c.leader()
        assert leader is not None and leader.core is not None
        term = leader.core.term
        end = c.now + ms
        while c.now < end:
            self._issue(self.rng.random() < 0.5, watch="an operation while the cluster was healthy")
            c.run_for(self._exp(self.opts.op_interval_ms * 4))
        self._settle("an operation while the cluster was healthy")
        now_leader = c.leader()
        members = leader.core.conf.members() if leader.core is not None else set()
        raised = {
            n.id: n.core.term
            for n in c.live()
            if n.id in members and n.core is not None and n.core.term > term
        }
        if now_leader is not leader or raised or leader.core is None or leader.core.term != term:
            raise LivenessFailure(
                f"availability: an election while the leader {leader.id} of term {term} was reachable "
                f"(leader now {now_leader.id if now_leader else None}, terms raised: {raised}) "
                f"({self.opts.command()})"
            )

    def _answered(self, key: bytes) -> None:
        issued = self.probes.pop(key, None)
        if issued is None:
            return
        self.probe_index.pop(key, None)
        self.probe_count += 1
        if self.c.now - issued > self.probe_bound:
            raise LivenessFailure(
                f"availability: {key.decode()} answered {self.c.now - issued:.0f} ms after it was issued, "
                f"beyond the bound of {self.probe_bound:.0f} ms ({self.opts.command()})"
            )

    def _settle(self, what: str) -> None:
        """Run until every watched operation is answered; fail if one is not within the bound."""
        probes = self.probes
        if not probes:
            return
        c = self.c
        c.run_until(lambda: not probes, min(probes.values()) + self.probe_bound - c.now)
        if probes:
            late = sorted(k.decode() for k in probes)
            raise LivenessFailure(
                f"availability: {what} ({', '.join(late[:3])}) not answered within "
                f"{self.probe_bound:.0f} ms ({self.opts.command()})"
            )


def run(opts: SimOptions) -> SimResult:
    """Run one simulation (a swarm run with its seed's configuration, see :func:`resolve`).

    Raises :class:`~phalanx_aio.sim.checker.SafetyViolation` or
    :class:`~phalanx_aio.sim.checker.LivenessFailure` (with its subclass
    :class:`~phalanx_aio.sim.checker.BudgetExceeded`); these and any exception a core raises
    carry a note with the seed and the command that replays the run."""
    try:
        return _Run(resolve(opts)).run()
    except Exception as exc:
        exc.add_note(f"seed {opts.seed}; replay with: {opts.command()}")
        raise


def _remove(nid: str) -> ConfChange:
    return ConfChange(ConfChangeType.REMOVE, nid)
