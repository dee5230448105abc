"""A linearizability checker for histories of operations on a key-value store.

The model is one register per key holding a string or nothing (absent). Four operations act on it:

* ``put(key, value)`` sets the register;
* ``get(key)`` returns its value (``None`` if absent);
* ``delete(key)`` clears it and returns whether the key existed;
* ``cas(key, expected, new)`` returns the value found (``None`` if absent) and stores ``new``
  exactly when the value found equals ``expected`` -- the way phalanx_aio's KV state machine
  reports a compare-and-set.

Every operation carries its call time, its return time and an outcome: ``ok`` (the result is
known), ``failed`` (it certainly took no effect; it is dropped) or ``unknown`` (it may or may not
have taken effect). An unknown write may take effect at any instant after its call, or never, so
its return time is treated as infinite; an unknown read constrains nothing and is dropped.

Linearizability is local (Herlihy and Wing's P-compositionality): a history is linearizable exactly
when its restriction to every key is. :func:`check_history` therefore splits the history by key and
runs, per key, the search of Wing and Gong (1993) over linearization orders that respect real time,
with the memoisation Lowe (2017) added to it: a configuration -- the set of operations already
linearized (a bitset) and the register's state -- is explored at most once.

Run it on a JSON-lines history file with ``python -m phalanx_aio.chaos.linearizability FILE``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import IO, Any

__all__ = [
    "CheckResult",
    "KeyResult",
    "OpKind",
    "Operation",
    "Outcome",
    "Verdict",
    "check_history",
    "check_key",
    "dump_history",
    "load_history",
    "main",
    "read_history",
    "write_history",
]


class OpKind(StrEnum):
    """The operation an :class:`Operation` performs on its key."""

    PUT = "put"
    GET = "get"
    DELETE = "delete"
    CAS = "cas"


class Outcome(StrEnum):
    """What the client learned about an operation."""

    OK = "ok"
    """It took effect once and ``result`` is what it returned."""
    FAILED = "failed"
    """It certainly took no effect."""
    UNKNOWN = "unknown"
    """It may have taken effect (at any time after its call) or not; ``result`` is meaningless."""


class Verdict(StrEnum):
    """The checker's answer for one key or for a whole history."""

    LINEARIZABLE = "linearizable"
    VIOLATION = "violation"
    UNDECIDED = "undecided"
    """The search hit its state budget before reaching an answer."""


Result = str | bool | None


@dataclass(frozen=True, slots=True)
class Operation:
    """One client operation on one key.

    ``value`` is the value written (put) or the new value (cas); ``expected`` is the value a cas
    requires (``None``: the key must be absent). ``result`` is what an ``ok`` operation returned:
    the value read (get), whether the key existed (delete), the value found (cas); it is ignored
    for put. ``ret`` is the return time; ``None`` means the operation never returned.
    """

    op_id: int
    kind: OpKind
    key: str
    call: float
    ret: float | None
    outcome: Outcome = Outcome.OK
    value: str | None = None
    expected: str | None = None
    result: Result = None
    client: int | str | None = None

    def __post_init__(self) -> None:
        if self.kind in (OpKind.PUT, OpKind.CAS) and self.value is None:
            raise ValueError(f"op {self.op_id}: {self.kind} needs a value")
        if self.outcome is Outcome.OK:
            if self.ret is None:
                raise ValueError(f"op {self.op_id}: an ok operation needs a return time")
            if self.kind is OpKind.DELETE and not isinstance(self.result, bool):
                raise ValueError(f"op {self.op_id}: an ok delete's result must be a bool")
            if self.kind in (OpKind.GET, OpKind.CAS) and not (
                self.result is None or isinstance(self.result, str)
            ):
                raise ValueError(f"op {self.op_id}: an ok {self.kind}'s result must be a string or None")
        if self.ret is not None and self.ret < self.call:
            raise ValueError(f"op {self.op_id}: returns at {self.ret} before its call at {self.call}")

    @property
    def is_write(self) -> bool:
        """Whether the operation can change the register (everything but get)."""
        return self.kind is not OpKind.GET

    @property
    def effective_return(self) -> float:
        """The return time the checker uses: infinite for unknown or unreturned operations."""
        if self.outcome is Outcome.UNKNOWN or self.ret is None:
            return math.inf
        return self.ret

    def describe(self) -> str:
        """A short human-readable rendering, e.g. ``#4 c2 cas(k, 'a'->'b') = 'a' ok [3.0, 5.0]``."""
        if self.kind is OpKind.PUT:
            body = f"put({self.key}, {self.value!r})"
        elif self.kind is OpKind.GET:
            body = f"get({self.key})"
        elif self.kind is OpKind.DELETE:
            body = f"delete({self.key})"
        else:
            body = f"cas({self.key}, {self.expected!r}->{self.value!r})"
        if self.outcome is Outcome.OK and self.kind is not OpKind.PUT:
            body += f" = {self.result!r}"
        who = f" c{self.client}" if self.client is not None else ""
        ret = "inf" if self.ret is None else f"{self.ret:g}"
        return f"#{self.op_id}{who} {body} {self.outcome} [{self.call:g}, {ret}]"

    def to_json(self) -> dict[str, Any]:
        """The operation as a JSON-compatible dict (the inverse of :meth:`from_json`)."""
        d: dict[str, Any] = {
            "id": self.op_id,
            "op": str(self.kind),
            "key": self.key,
            "call": self.call,
            "return": self.ret,
            "outcome": str(self.outcome),
        }
        if self.kind in (OpKind.PUT, OpKind.CAS):
            d["value"] = self.value
        if self.kind is OpKind.CAS:
            d["expected"] = self.expected
        if self.kind is not OpKind.PUT:
            d["result"] = self.result
        if self.client is not None:
            d["client"] = self.client
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Operation:
        """Build an operation from a dict as written by :meth:`to_json`."""
        ret = d.get("return")
        return cls(
            op_id=int(d["id"]),
            kind=OpKind(d["op"]),
            key=str(d["key"]),
            call=float(d["call"]),
            ret=None if ret is None else float(ret),
            outcome=Outcome(d.get("outcome", "ok")),
            value=d.get("value"),
            expected=d.get("expected"),
            result=d.get("result"),
            client=d.get("client"),
        )


# --------------------------------------------------------------------------- JSON lines


def dump_history(ops: Iterable[Operation], fp: IO[str]) -> None:
    """Write ``ops`` to a text stream, one JSON object per line."""
    for op in ops:
        fp.write(json.dumps(op.to_json(), sort_keys=True))
        fp.write("\n")


def load_history(fp: IO[str]) -> list[Operation]:
    """Read a history written by :func:`dump_history` (blank lines and ``#`` comments skipped)."""
    ops: list[Operation] = []
    for lineno, line in enumerate(fp, 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        try:
            ops.append(Operation.from_json(json.loads(text)))
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"line {lineno}: {exc}") from exc
    return ops


def write_history(path: str | Path, ops: Iterable[Operation]) -> None:
    """Write ``ops`` to the JSON-lines file at ``path``."""
    with open(path, "w", encoding="utf-8") as fp:
        dump_history(ops, fp)


def read_history(path: str | Path) -> list[Operation]:
    """Read the JSON-lines history file at ``path``."""
    with open(path, encoding="utf-8") as fp:
        return load_history(fp)


# --------------------------------------------------------------------------- the model

_ILLEGAL = object()


def _step(state: str | None, op: Operation) -> object:
    """The register's state after ``op`` runs on ``state``, or ``_ILLEGAL`` if its result disagrees."""
    known = op.outcome is Outcome.OK
    kind = op.kind
    if kind is OpKind.PUT:
        return op.value
    if kind is OpKind.GET:
        return state if state == op.result else _ILLEGAL
    if kind is OpKind.DELETE:
        if known and op.result != (state is not None):
            return _ILLEGAL
        return None
    # CAS: the result is the value found; it swapped iff that equals ``expected``.
    if known and op.result != state:
        return _ILLEGAL
    return op.value if state == op.expected else state


# --------------------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class KeyResult:
    """The verdict for one key.

    For a violation, ``prefix`` is the longest linearization found (the most ``ok`` operations
    placed), ``state`` the register's value after it, and ``stuck`` the operations that could have
    come next in real time but whose results contradict that state.
    """

    key: str
    verdict: Verdict
    ops_checked: int
    states_explored: int
    prefix: tuple[Operation, ...] = ()
    state: str | None = None
    stuck: tuple[Operation, ...] = ()

    @property
    def ok(self) -> bool:
        """Whether this key's history is linearizable."""
        return self.verdict is Verdict.LINEARIZABLE

    def explain(self) -> str:
        """A multi-line explanation of the verdict."""
        head = f"key {self.key!r}: {self.verdict} ({self.ops_checked} ops, {self.states_explored} states)"
        if self.verdict is not Verdict.VIOLATION:
            return head
        lines = [head, f"  longest linearizable prefix ({len(self.prefix)} ops):"]
        lines += [f"    {op.describe()}" for op in self.prefix]
        lines.append(f"  register after it: {self.state!r}")
        lines.append("  none of these can come next:")
        lines += [f"    {op.describe()}" for op in self.stuck]
        return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class CheckResult:
    """The verdict for a whole history: per key and overall."""

    verdict: Verdict
    keys: dict[str, KeyResult] = field(default_factory=dict)
    ops_checked: int = 0
    ops_dropped: int = 0
    """Failed operations and unknown reads, which constrain nothing."""

    @property
    def ok(self) -> bool:
        """Whether the whole history is linearizable."""
        return self.verdict is Verdict.LINEARIZABLE

    @property
    def violations(self) -> list[KeyResult]:
        """The keys whose histories are not linearizable."""
        return [r for r in self.keys.values() if r.verdict is Verdict.VIOLATION]

    def explain(self) -> str:
        """A summary line followed by an explanation of every key that is not linearizable."""
        head = (
            f"{self.verdict}: {self.ops_checked} ops checked over {len(self.keys)} keys"
            f" ({self.ops_dropped} dropped)"
        )
        rest = [r.explain() for r in self.keys.values() if r.verdict is not Verdict.LINEARIZABLE]
        return "\n".join([head, *rest])


# --------------------------------------------------------------------------- the search


def _relevant(op: Operation) -> bool:
    """Failed operations never happened and unknown reads constrain nothing."""
    if op.outcome is Outcome.FAILED:
        return False
    return not (op.outcome is Outcome.UNKNOWN and op.kind is OpKind.GET)


def check_key(
    key: str,
    ops: Sequence[Operation],
    *,
    initial: str | None = None,
    max_states: int | None = None,
) -> KeyResult:
    """Check the history of one key (every op must be on ``key``; failed ops and unknown reads are dropped).

    A depth-first search over configurations ``(linearized set, register state)``. From a
    configuration, an operation may be linearized next if it is not yet linearized and no other
    pending operation returned before it was called; it must agree with the model (``ok`` results
    must match). Unknown writes never have to be placed. The history is linearizable when some
    configuration holds every ``ok`` operation. Each configuration is visited once (Lowe's cache),
    and one that used a superset of another's unknown writes, with the same ``ok`` operations
    placed and the same state, is not visited at all.
    ``max_states`` bounds the configurations visited; reaching it gives ``Verdict.UNDECIDED``.
    """
    if any(op.key != key for op in ops):
        raise ValueError(f"check_key({key!r}) given an operation on another key")
    hist = sorted((op for op in ops if _relevant(op)), key=lambda o: (o.call, o.op_id))
    n = len(hist)
    calls = [op.call for op in hist]
    rets = [op.effective_return for op in hist]
    required = 0
    for i, op in enumerate(hist):
        if op.outcome is Outcome.OK:
            required |= 1 << i
    n_required = required.bit_count()
    optional = ((1 << n) - 1) & ~required

    # A path is a cons list (op index, previous path) so pushing a child is O(1).
    start: tuple[int, str | None, Any] = (0, initial, None)
    stack = [start]
    # Lowe's cache, refined for unknown writes: configurations are keyed by the ok operations placed
    # and the state, and each entry keeps the sets of unknown writes used to get there. Having used
    # fewer unknown writes is never worse (an unused one may still be placed later, or never, and
    # it does not hold back anything else), so a configuration is skipped when an entry with a
    # subset of its unknown writes was already reached.
    seen: dict[tuple[int, str | None], list[int]] = {(0, initial): [0]}
    best = start
    best_count = -1
    explored = 0
    while stack:
        done, state, path = stack.pop()
        explored += 1
        placed = (done & required).bit_count()
        if placed == n_required:
            return KeyResult(key, Verdict.LINEARIZABLE, n, explored)
        if placed > best_count:
            best, best_count = (done, state, path), placed
        if max_states is not None and explored >= max_states:
            return KeyResult(key, Verdict.UNDECIDED, n, explored)
        children: list[tuple[int, str | None, Any]] = []
        horizon = math.inf
        cands = []
        # Every op before the first unplaced ok op is placed or an unknown write; those (never
        # many, and their infinite return never lowers the horizon) are always candidates. The
        # scan for the rest starts at that first unplaced ok op, so a step costs the window of
        # concurrent ops rather than the whole history.
        pending = required & ~done
        low = (pending & -pending).bit_length() - 1
        early = optional & ~done & ((1 << low) - 1)
        while early:
            bit = early & -early
            cands.append(bit.bit_length() - 1)
            early ^= bit
        for i in range(low, n):
            if done >> i & 1:
                continue
            if calls[i] > horizon:
                break
            if rets[i] < horizon:
                horizon = rets[i]
            cands.append(i)
        for i in cands:
            if calls[i] > horizon:
                continue
            nxt = _step(state, hist[i])
            if nxt is _ILLEGAL:
                continue
            assert nxt is None or isinstance(nxt, str)
            now = done | 1 << i
            used = now & ~required
            entry = seen.setdefault((now & required, nxt), [])
            if any(u & ~used == 0 for u in entry):
                continue
            entry[:] = [u for u in entry if used & ~u]
            entry.append(used)
            children.append((now, nxt, (i, path)))
        # Explore the earliest-called candidate first.
        children.reverse()
        stack.extend(children)

    done, state, path = best
    order: list[Operation] = []
    while path is not None:
        i, path = path
        order.append(hist[i])
    order.reverse()
    horizon = min((rets[i] for i in range(n) if not done >> i & 1), default=math.inf)
    stuck = tuple(
        hist[i]
        for i in range(n)
        if not done >> i & 1 and calls[i] <= horizon and _step(state, hist[i]) is _ILLEGAL
    )
    return KeyResult(key, Verdict.VIOLATION, n, explored, tuple(order), state, stuck)


def check_history(
    ops: Iterable[Operation],
    *,
    initial: Mapping[str, str] | None = None,
    max_states_per_key: int | None = None,
) -> CheckResult:
    """Check a whole KV history for linearizability, key by key.

    ``initial`` gives the keys present before the history began (all others start absent).
    The overall verdict is a violation if any key is one, else undecided if any key is, else
    linearizable.
    """
    by_key: dict[str, list[Operation]] = {}
    dropped = 0
    seen_ids: set[int] = set()
    for op in ops:
        if op.op_id in seen_ids:
            raise ValueError(f"duplicate operation id {op.op_id}")
        seen_ids.add(op.op_id)
        if _relevant(op):
            by_key.setdefault(op.key, []).append(op)
        else:
            dropped += 1
    init = initial or {}
    results = {
        key: check_key(key, kops, initial=init.get(key), max_states=max_states_per_key)
        for key, kops in sorted(by_key.items())
    }
    verdicts = {r.verdict for r in results.values()}
    if Verdict.VIOLATION in verdicts:
        verdict = Verdict.VIOLATION
    elif Verdict.UNDECIDED in verdicts:
        verdict = Verdict.UNDECIDED
    else:
        verdict = Verdict.LINEARIZABLE
    checked = sum(r.ops_checked for r in results.values())
    return CheckResult(verdict, results, checked, dropped)


# --------------------------------------------------------------------------- command line


def main(argv: Sequence[str] | None = None) -> int:
    """Check JSON-lines history files; exit status 0 if all are linearizable, 1 if not, 2 if undecided."""
    parser = argparse.ArgumentParser(
        prog="python -m phalanx_aio.chaos.linearizability",
        description="Check a JSON-lines KV history for linearizability.",
    )
    parser.add_argument("files", nargs="+", type=Path, help="history files (one operation per line)")
    parser.add_argument("--max-states", type=int, default=None, help="state budget per key")
    args = parser.parse_args(argv)
    status = 0
    for path in args.files:
        result = check_history(read_history(path), max_states_per_key=args.max_states)
        print(f"{path}: {result.explain()}")
        if result.verdict is Verdict.VIOLATION:
            status = 1
        elif result.verdict is Verdict.UNDECIDED and status == 0:
            status = 2
    return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
