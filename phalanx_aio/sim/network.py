"""The simulated network: latency models, loss, duplication, reordering and partitions.

Everything is a plain options record plus one seeded ``random.Random`` owned by the cluster, so
a seed replays the same deliveries. Time is in simulated milliseconds.
"""

from __future__ import annotations

import importlib.resources
import json
import math
import pathlib
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

__all__ = [
    "ConstantLatency",
    "Latency",
    "NetworkOptions",
    "RegionLatency",
    "UniformLatency",
    "load_rtt_matrix",
]


@dataclass(frozen=True, slots=True)
class ConstantLatency:
    """Every message takes ``ms`` milliseconds one way."""

    ms: float = 1.0

    def delay(self, rng: random.Random, src: str, dst: str) -> float:
        """One-way delay of one message from ``src`` to ``dst``."""
        return self.ms


@dataclass(frozen=True, slots=True)
class UniformLatency:
    """One-way delay drawn uniformly from ``[low_ms, high_ms]`` per message."""

    low_ms: float = 1.0
    high_ms: float = 5.0

    def delay(self, rng: random.Random, src: str, dst: str) -> float:
        """One-way delay of one message from ``src`` to ``dst``."""
        return rng.uniform(self.low_ms, self.high_ms)


@dataclass(frozen=True, slots=True)
class RegionLatency:
    """Round trips between regions from a matrix; nodes are placed in regions.

    One-way delay is ``rtt / 2`` times ``1 + |normal(0, jitter)|``; with probability
    ``spike_prob`` a message is held up by an extra ``uniform(1, 3) x rtt`` (the defaults are the
    ``suggested_faults`` of the reference five-region mesh). Within a region the delay is
    ``local_ms``.
    """

    rtt_ms: Mapping[str, Mapping[str, float]]
    placement: Mapping[str, str]
    jitter: float = 0.10
    spike_prob: float = 0.01
    local_ms: float = 0.5

    def delay(self, rng: random.Random, src: str, dst: str) -> float:
        """One-way delay of one message from ``src`` to ``dst``."""
        a, b = self.placement[src], self.placement[dst]
        rtt = self.rtt_ms[a][b]
        if rtt <= 0:
            return self.local_ms
        one_way = rtt / 2 * (1 + abs(rng.gauss(0.0, self.jitter)))
        if self.spike_prob and rng.random() < self.spike_prob:
            one_way += rng.uniform(1.0, 3.0) * rtt
        return one_way

    @classmethod
    def place(
        cls,
        rtt_ms: Mapping[str, Mapping[str, float]],
        regions: Sequence[str],
        node_ids: Iterable[str],
        **kw: float,
    ) -> RegionLatency:
        """Place ``node_ids`` round-robin over ``regions``."""
        placement = {nid: regions[i % len(regions)] for i, nid in enumerate(node_ids)}
        return cls(rtt_ms=rtt_ms, placement=placement, **kw)


Latency = ConstantLatency | UniformLatency | RegionLatency


GLOBAL_RTT_RESOURCE = "global_rtt.json"
"""The five-region matrix shipped in ``phalanx_aio.sim.data`` (the reference global mesh)."""


def load_rtt_matrix(
    path: str | pathlib.Path | None = None,
) -> tuple[list[str], dict[str, dict[str, float]], dict[str, object]]:
    """Read a region RTT file (``regions``, ``rtt_ms``, optional ``suggested_faults``).

    With no ``path``, read the five-region reference matrix that ships inside the package
    (Lagos, London, Chicago, Singapore, Frankfurt), so an installed wheel needs no other file.
    Raises ``ValueError`` naming the file when a figure is missing, negative or not finite.
    """
    if path is None:
        text = importlib.resources.files("phalanx_aio.sim.data").joinpath(GLOBAL_RTT_RESOURCE).read_text()
        path = f"phalanx_aio.sim.data/{GLOBAL_RTT_RESOURCE}"
    else:
        text = pathlib.Path(path).read_text()
    doc = json.loads(text)
    regions = [str(r) for r in doc["regions"]]
    rtt = {str(a): {str(b): float(v) for b, v in row.items()} for a, row in doc["rtt_ms"].items()}
    for a in regions:
        for b in regions:
            if b not in rtt.get(a, {}):
                raise ValueError(f"{path}: no RTT {a}->{b}")
            if not math.isfinite(rtt[a][b]) or rtt[a][b] < 0:
                raise ValueError(f"{path}: bad RTT {a}->{b}: {rtt[a][b]}")
    return regions, rtt, dict(doc.get("suggested_faults", {}))


@dataclass(slots=True)
class NetworkOptions:
    """How the simulated network misbehaves. Mutable: scenarios change it while running."""

    latency: Latency = field(default_factory=UniformLatency)
    loss: float = 0.0
    """Probability that a message is dropped."""
    duplicate: float = 0.0
    """Probability that a message is delivered twice."""
    reorder: float = 0.0
    """Probability that a message is held back by ``reorder_ms`` more (so later ones overtake)."""
    reorder_ms: tuple[float, float] = (0.0, 200.0)
    reslice: float = 0.0
    """Probability that a leader's append is followed by another it may legally send: a
    slice of one to three entries of its log from an earlier point (up to eight entries
    before the original's), with its commit index. A correct follower commits no further
    than the slice verified; one that does not can commit a stale suffix the slice left
    unexamined."""
    blocked: set[tuple[str, str]] = field(default_factory=set)
    """Directed links ``(src, dst)`` that drop everything (partitions)."""

    def deliveries(self, rng: random.Random, src: str, dst: str) -> list[float]:
        """Delays (ms) after which copies of one message arrive; empty if it is lost."""
        if (src, dst) in self.blocked:
            return []
        if self.loss and rng.random() < self.loss:
            return []
        copies = 2 if self.duplicate and rng.random() < self.duplicate else 1
        out = []
        for _ in range(copies):
            d = self.latency.delay(rng, src, dst)
            if self.reorder and rng.random() < self.reorder:
                d += rng.uniform(*self.reorder_ms)
            out.append(d)
        return out

    def isolate(self, node: str, others: Iterable[str]) -> None:
        """Cut ``node`` off from ``others`` in both directions."""
        for o in others:
            if o != node:
                self.blocked.add((node, o))
                self.blocked.add((o, node))

    def reconnect(self, node: str) -> None:
        """Undo every cut link that touches ``node``."""
        self.blocked = {(a, b) for a, b in self.blocked if a != node and b != node}

    def partition(self, groups: Sequence[Iterable[str]]) -> None:
        """Split into ``groups``: links between different groups are cut both ways."""
        sets = [set(g) for g in groups]
        for i, ga in enumerate(sets):
            for gb in sets[i + 1 :]:
                for a in ga:
                    for b in gb:
                        self.blocked.add((a, b))
                        self.blocked.add((b, a))

    def heal(self) -> None:
        """Remove every partition."""
        self.blocked = set()
