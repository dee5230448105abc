"""The nemesis: a seeded schedule of faults, injected into a :class:`~phalanx_aio.chaos.cluster.ChaosCluster`.

:func:`plan_faults` turns a seed into a list of :class:`FaultStep`: when each step starts, how long
it lasts and which fault kinds it combines (one, or a network fault with a process fault). The
plan is a pure function of its arguments. Targets that depend on the run (the current leader, a
running member) are drawn when the step starts, from a generator seeded by the seed and the step's
number, so a replay makes the same choices wherever the cluster is in the same state.

:class:`Nemesis` runs a plan: it applies a step, waits, undoes it, and records a
:class:`FaultWindow` per fault (the times are seconds on the run's clock). :meth:`Nemesis.heal`
ends every fault: links back to normal, paused members resumed, dead ones restarted, removed
ones joined again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from phalanx_aio.chaos.cluster import ChaosCluster, NodeState
from phalanx_aio.chaos.proxy import LinkMode
from phalanx_aio.errors import OutcomeUnknown, PhalanxError
from phalanx_aio.kv.client import KVClient

__all__ = [
    "DEFAULT_FAULTS",
    "NETWORK_FAULTS",
    "PROCESS_FAULTS",
    "FaultKind",
    "FaultStep",
    "FaultWindow",
    "Nemesis",
    "plan_faults",
]

log = logging.getLogger("phalanx_aio.chaos")


class FaultKind(StrEnum):
    """The faults the nemesis can inject."""

    KILL = "kill"
    """SIGKILL one running member (any), restart it at the end of the step."""
    KILL_LEADER = "kill-leader"
    """SIGKILL the leader, restart it at the end of the step."""
    KILL_TWO = "kill-two"
    """SIGKILL the leader and one other member at once, restart both."""
    PAUSE = "pause"
    """SIGSTOP a member (the leader half the time) for longer than the election timeout."""
    PARTITION = "partition"
    """Split the members into a random minority and majority (blackholed links)."""
    ISOLATE_LEADER = "isolate-leader"
    """Cut the leader from every other member."""
    BRIDGE = "bridge"
    """Two halves that cannot talk, and one member (not the leader) that talks to both."""
    ONE_WAY = "one-way"
    """Block one direction only: leader -> a follower, or every follower -> leader."""
    DROP = "drop"
    """Reset (close) the connections of a random half of the links and refuse new ones."""
    DELAY = "delay"
    """Delay every link by a random 20-200 ms."""
    MEMBERSHIP = "membership"
    """Remove a follower, wipe it, then add it back through ``serve --join``."""
    TRANSFER = "transfer"
    """Hand leadership to another voter."""
    JOINT = "joint"
    """Remove two followers in one joint change (C_old,new, then C_new), wipe both, and bring
    them back through ``serve --join`` (each added as a learner, then promoted)."""
    REFOUND = "refound"
    """Wipe a follower and restart it with ``--bootstrap``, as an operator might by mistake:
    ``serve`` must refuse (exit 2) when the leader answers; then start it with ``--join``.
    Not in the default mix (it wipes a member that was not removed first)."""
    WIPE = "wipe"
    """Wipe a follower's data directory and restart it with its founding command line, which
    ``serve`` must refuse (no store and no ``--bootstrap``); then start it with ``--join``,
    which replaces its old membership (removed, added back as a learner, promoted). Not in the
    default mix: see ``docs/chaos.md``."""


NETWORK_FAULTS = frozenset(
    {
        FaultKind.PARTITION,
        FaultKind.ISOLATE_LEADER,
        FaultKind.BRIDGE,
        FaultKind.ONE_WAY,
        FaultKind.DROP,
        FaultKind.DELAY,
    }
)
"""Faults on links (undone together by healing the network)."""
PROCESS_FAULTS = frozenset({FaultKind.KILL, FaultKind.KILL_LEADER, FaultKind.KILL_TWO, FaultKind.PAUSE})
"""Faults on processes, which may be combined with one network fault."""
DEFAULT_FAULTS: tuple[FaultKind, ...] = tuple(
    k for k in FaultKind if k not in (FaultKind.WIPE, FaultKind.REFOUND)
)
"""Every fault kind but those that wipe a member that is still in the configuration."""


@dataclass(frozen=True, slots=True)
class FaultStep:
    """One step of a plan: ``kinds`` injected together at ``at`` seconds for ``duration`` seconds."""

    index: int
    at: float
    duration: float
    kinds: tuple[FaultKind, ...]


@dataclass(frozen=True, slots=True)
class FaultWindow:
    """A fault as it was injected: from ``start`` to ``end`` (run-clock seconds), on ``targets``."""

    kind: FaultKind
    start: float
    end: float
    targets: tuple[str, ...]
    detail: str = ""
    step: int = 0

    def to_json(self) -> dict[str, Any]:
        """The window as a JSON-compatible dict."""
        return {
            "kind": str(self.kind),
            "start": round(self.start, 4),
            "end": round(self.end, 4),
            "targets": list(self.targets),
            "detail": self.detail,
            "step": self.step,
        }


def plan_faults(
    seed: int,
    duration: float,
    *,
    kinds: Sequence[FaultKind] = DEFAULT_FAULTS,
    start: float = 2.0,
    step_seconds: tuple[float, float] = (2.0, 5.0),
    gap_seconds: tuple[float, float] = (1.0, 2.5),
    combine: float = 0.25,
) -> list[FaultStep]:
    """A deterministic plan of fault steps filling ``[start, duration)`` seconds.

    Step lengths and the gaps between steps are drawn uniformly from the given ranges. Each
    step injects one kind from ``kinds`` (cycling through a shuffled order so every kind comes up
    regularly), or, with probability ``combine``, a network fault together with a process fault.
    """
    if not kinds:
        raise ValueError("plan_faults needs at least one fault kind")
    if duration <= start:
        return []
    rng = random.Random(f"plan/{seed}")
    order: list[FaultKind] = []
    net = [k for k in kinds if k in NETWORK_FAULTS]
    proc = [k for k in kinds if k in PROCESS_FAULTS]
    steps: list[FaultStep] = []
    t = start
    while True:
        length = rng.uniform(*step_seconds)
        if t + length > duration:
            break
        if not order:
            order = list(dict.fromkeys(kinds))
            rng.shuffle(order)
        kind = order.pop()
        chosen: tuple[FaultKind, ...] = (kind,)
        if net and proc and rng.random() < combine:
            if kind in NETWORK_FAULTS:
                chosen = (kind, rng.choice(proc))
            elif kind in PROCESS_FAULTS:
                chosen = (rng.choice(net), kind)
        steps.append(FaultStep(len(steps), round(t, 3), round(length, 3), chosen))
        t += length + rng.uniform(*gap_seconds)
    return steps


class Nemesis:
    """Injects the faults of a plan into ``cluster``; times come from ``clock`` (run seconds)."""

    def __init__(self, cluster: ChaosCluster, *, seed: int, clock: Callable[[], float]) -> None:
        self.cluster = cluster
        self.seed = seed
        self.clock = clock
        self.windows: list[FaultWindow] = []
        """Every fault injected so far."""
        self.removed: set[str] = set()
        """Members removed from the configuration and not yet joined again."""
        self.errors: list[str] = []
        """Faults that could not be injected as planned (and why)."""

    # ----------------------------------------------------------------- running a plan

    async def run(self, plan: Sequence[FaultStep], stop: asyncio.Event | None = None) -> None:
        """Run every step of ``plan`` at its time (unless ``stop`` is set first)."""
        for step in plan:
            wait = step.at - self.clock()
            if wait > 0:
                if stop is None:
                    await asyncio.sleep(wait)
                else:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), wait)
            if stop is not None and stop.is_set():
                return
            await self.run_step(step)

    async def run_step(self, step: FaultStep) -> None:
        """Apply ``step``'s faults, keep them for its duration, undo them, record the windows."""
        rng = random.Random(f"step/{self.seed}/{step.index}")
        leader = await self._leader()
        undo: list[tuple[FaultKind, float, tuple[str, ...], str, Callable[[], Any]]] = []
        for kind in step.kinds:
            t0 = self.clock()
            try:
                targets, detail, fn = await self._apply(kind, rng, leader, step.duration)
            except (PhalanxError, OSError, RuntimeError, ValueError) as exc:
                self.errors.append(f"step {step.index} {kind}: {exc}")
                log.info("nemesis: step %d %s not injected: %s", step.index, kind, exc)
                continue
            undo.append((kind, t0, targets, detail, fn))
        ends: dict[int, float] = {}
        if any(fn is not None for *_, fn in undo):
            await asyncio.sleep(step.duration)
        for i, (_kind, _t0, _targets, _detail, fn) in enumerate(undo):
            if fn is not None:
                try:
                    result = fn()
                    if asyncio.iscoroutine(result):
                        await result
                except (PhalanxError, OSError, RuntimeError) as exc:
                    self.errors.append(f"step {step.index} undo: {exc}")
            ends[i] = self.clock()
        for i, (kind, t0, targets, detail, _fn) in enumerate(undo):
            self.windows.append(FaultWindow(kind, t0, ends[i], targets, detail, step.index))

    async def _leader(self, wait: float = 5.0) -> str | None:
        """The current leader, polling up to ``wait`` seconds for one to be elected."""
        return await self.cluster.wait_for_leader(wait)

    def _running(self) -> list[str]:
        c = self.cluster
        c.reap()
        return [n for n in c.ids if c.state[n] is NodeState.RUNNING and n not in self.removed]

    async def _apply(
        self, kind: FaultKind, rng: random.Random, leader: str | None, duration: float
    ) -> tuple[tuple[str, ...], str, Callable[[], Any]]:
        """Inject ``kind``; return (targets, detail, a function that undoes it)."""
        c = self.cluster
        running = self._running()
        members = [n for n in c.ids if n not in self.removed]
        lead = leader if leader in running else None
        if kind in (FaultKind.KILL, FaultKind.KILL_LEADER, FaultKind.KILL_TWO):
            if not running:
                raise RuntimeError("no running member to kill")
            if kind is FaultKind.KILL:
                victims = [rng.choice(running)]
            else:
                first = lead or rng.choice(running)
                victims = [first]
                others = [n for n in running if n != first]
                if kind is FaultKind.KILL_TWO and others:
                    victims.append(rng.choice(others))
            for v in victims:
                c.kill(v)

            def restart() -> None:
                for v in victims:
                    if c.state[v] is NodeState.DOWN and v not in self.removed:
                        c.restart(v)

            detail = "leader" if lead in victims else ""
            return tuple(victims), detail, restart
        if kind is FaultKind.PAUSE:
            if not running:
                raise RuntimeError("no running member to pause")
            victim = lead if lead is not None and rng.random() < 0.5 else rng.choice(running)
            c.pause(victim)
            return (victim,), "leader" if victim == lead else "", lambda: c.resume(victim)
        if kind is FaultKind.PARTITION:
            shuffled = members[:]
            rng.shuffle(shuffled)
            k = rng.randint(1, max(1, (len(shuffled) - 1) // 2))
            minority, majority = shuffled[:k], shuffled[k:]
            c.partition(minority, majority)
            return tuple(minority), f"{'+'.join(minority)} | {'+'.join(majority)}", c.heal_network
        if kind is FaultKind.ISOLATE_LEADER:
            if lead is None:
                raise RuntimeError("no leader to isolate")
            c.partition([lead], [n for n in members if n != lead])
            return (lead,), "leader", c.heal_network
        if kind is FaultKind.BRIDGE:
            if len(members) < 3:
                raise RuntimeError("a bridge needs three members")
            candidates = [n for n in members if n != lead] or members
            bridge = rng.choice(candidates)
            rest = [n for n in members if n != bridge]
            rng.shuffle(rest)
            half = len(rest) // 2
            left, right = rest[:half], rest[half:]
            c.bridge(left, bridge, right)
            return (bridge,), f"{'+'.join(left)} <- {bridge} -> {'+'.join(right)}", c.heal_network
        if kind is FaultKind.ONE_WAY:
            if lead is None:
                raise RuntimeError("no leader for a one-way partition")
            followers = [n for n in members if n != lead]
            if not followers:
                raise RuntimeError("no follower")
            if rng.random() < 0.5:
                f = rng.choice(followers)
                c.set_link(lead, f, LinkMode.BLACKHOLE)
                return (lead, f), f"{lead} -x-> {f}", c.heal_network
            for f in followers:
                c.set_link(f, lead, LinkMode.BLACKHOLE)
            return (lead,), f"followers -x-> {lead}", c.heal_network
        if kind is FaultKind.DROP:
            links = sorted(c.links)
            chosen = rng.sample(links, max(1, len(links) // 2))
            for src, dst in chosen:
                c.set_link(src, dst, LinkMode.REJECT)
            return (), f"{len(chosen)} links reset", c.heal_network
        if kind is FaultKind.DELAY:
            for key in sorted(c.links):
                c.links[key].set_delay(rng.uniform(0.02, 0.2))
            return (), "20-200 ms", c.heal_network
        if kind is FaultKind.TRANSFER:
            if lead is None:
                raise RuntimeError("no leader to transfer from")
            to = rng.choice([n for n in running if n != lead] or [lead])
            got = await self._admin_call(lambda kv: kv.transfer_leader(to), timeout=max(duration, 3.0))
            return (lead, to), f"{lead} -> {to}: {got}", lambda: None
        if kind is FaultKind.MEMBERSHIP:
            return await self._remove_and_rejoin(rng, lead, running, duration, count=1)
        if kind is FaultKind.JOINT:
            return await self._remove_and_rejoin(rng, lead, running, duration, count=2)
        if kind in (FaultKind.WIPE, FaultKind.REFOUND):
            return await self._wipe(rng, lead, running, duration, bootstrap=kind is FaultKind.REFOUND)
        raise ValueError(f"unknown fault kind {kind!r}")

    async def _admin_call(self, fn: Callable[[KVClient], Any], *, timeout: float) -> Any:
        c = self.cluster
        async with KVClient(c.endpoints, cluster_id=c.cluster_id, timeout=timeout) as kv:
            return await fn(kv)

    async def _remove_and_rejoin(
        self, rng: random.Random, lead: str | None, running: list[str], duration: float, *, count: int
    ) -> tuple[tuple[str, ...], str, Callable[[], Any]]:
        """Remove ``count`` running followers (one: a single-server change; two: one joint
        change, C_old,new then C_new), wipe them and start them with ``--join`` (each is
        promoted by itself once caught up); the undo waits (up to the step's duration) until
        they are voters again."""
        c = self.cluster
        followers = [n for n in running if n != lead]
        if lead is None or len(followers) < count:
            what = "membership change" if count == 1 else "a joint change"
            raise RuntimeError(f"{what} needs a leader and {count} running follower(s)")
        victims = sorted(rng.sample(followers, count))

        async def change(kv: KVClient) -> Any:
            if count == 1:
                return await kv.remove_member(victims[0])  # a single-server change
            return await kv.change_members(remove=victims)

        with contextlib.suppress(OutcomeUnknown):  # then look at the configuration to find out
            await self._admin_call(change, timeout=max(duration, 5.0))
        members = await self._admin_call(lambda kv: kv.members(), timeout=5.0)
        if any(m.node_id in victims for m in members):
            raise RuntimeError(f"removing {'+'.join(victims)} did not take effect")
        for v in victims:
            self.removed.add(v)
            c.kill(v)
            c.wipe(v)
            c.start_node(v, join=lead)

        async def wait_promoted() -> None:
            for v in victims:
                await self.rejoin(v, timeout=max(duration, 5.0 + 5.0 * count))

        detail = f"removed {'+'.join(victims)}{' at once' if count > 1 else ''}, rejoining through {lead}"
        return tuple(victims), detail, wait_promoted

    async def _wipe(
        self, rng: random.Random, lead: str | None, running: list[str], duration: float, *, bootstrap: bool
    ) -> tuple[tuple[str, ...], str, Callable[[], Any]]:
        """Wipe a running follower that is still a member and restart it as an operator might
        by mistake: with its founding command line (``wipe``), which ``serve`` must refuse, or
        with ``--bootstrap`` (``refound``), which it must refuse when the leader answers; then
        bring it back the safe way, with ``--join``."""
        c = self.cluster
        name = "refound" if bootstrap else "wipe"
        victims = [n for n in running if n != lead]
        if not victims or (bootstrap and lead is None):
            raise RuntimeError(f"{name} needs a running follower" + (" and a leader" if bootstrap else ""))
        v = rng.choice(victims)
        c.kill(v)
        c.wipe(v)
        c.start_node(v, bootstrap=bootstrap)  # the founding command line (and --bootstrap)
        code = await c.wait_exit(v, timeout=10.0 if bootstrap else 30.0)
        if bootstrap and code is None:  # the leader did not answer in time: it founded again
            c.wipe(v)
            outcome = "not refused (leader unreachable)"
        else:
            if code != 2:
                how = "with --bootstrap" if bootstrap else "with its founding peers"
                self.errors.append(f"{name}: {v} restarted empty {how}: exit {code}, not 2")
            outcome = f"refused (exit {code})"
        via = lead if lead is not None and lead != v else next(n for n in running if n != v)
        c.start_node(v, join=via)  # the safe way back: its old membership is replaced

        async def wait_replaced() -> None:
            if not await self._replaced(v, timeout=max(duration, 20.0)):
                self.errors.append(f"{name}: {v} was not replaced and promoted in time")

        return (v,), f"{outcome}, rejoining through {via}", wait_replaced

    async def rejoin(self, nid: str, *, timeout: float) -> bool:
        """Wait until the removed member ``nid`` is a voter again (restarting it with ``--join``
        if it is down); return whether it is."""
        c = self.cluster
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if c.state[nid] is NodeState.DOWN:
                c.restart(nid)
            with contextlib.suppress(PhalanxError, OSError, TimeoutError):
                members = await self._admin_call(lambda kv: kv.members(), timeout=2.0)
                if any(m.node_id == nid and not m.learner for m in members):
                    self.removed.discard(nid)
                    return True
            await asyncio.sleep(0.3)
        return False

    async def _replaced(self, nid: str, *, timeout: float) -> bool:
        """Wait until ``nid`` (started empty with ``--join``, which has its old membership
        removed first) is a voter again and has applied the leader's commit index."""
        c = self.cluster
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(PhalanxError, OSError, TimeoutError):
                members = await self._admin_call(lambda kv: kv.members(), timeout=2.0)
                me = next((m for m in members if m.node_id == nid), None)
                log = (c.workdir / f"{nid}.log").read_text(errors="replace")
                promoted = log.rpartition("==== ")[2].count("promoted to voter") > 0  # since its last start
                if promoted and me is not None and not me.learner:
                    # The leader's commit index first, then the member's applied index: under
                    # load the leader always commits a little more meanwhile, so the other order
                    # (the member sampled before the leader) was almost never satisfied.
                    lead = await self._admin_call(lambda kv: kv.status(), timeout=2.0)
                    st = await c.status(nid)
                    if st is not None and st.applied_index >= lead.commit_index:
                        return True
            await asyncio.sleep(0.3)
        return False

    async def heal(self, *, timeout: float = 30.0) -> None:
        """End every fault: heal the network, resume paused members, restart dead ones, and wait
        (up to ``timeout``) for removed ones to be voters again."""
        c = self.cluster
        c.heal_network()
        c.reap()
        for nid in c.ids:
            if c.state[nid] is NodeState.PAUSED:
                c.resume(nid)
        for nid in c.ids:
            if c.state[nid] is NodeState.DOWN:
                c.restart(nid)
        for nid in sorted(self.removed):
            if not await self.rejoin(nid, timeout=timeout):
                self.errors.append(f"heal: {nid} did not rejoin within {timeout} s")
