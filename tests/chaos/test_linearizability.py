"""Tests for the KV linearizability checker.

The checker is compared against a deliberately naive oracle that tries every permutation of the
whole (multi-key) history, so neither key partitioning nor memoisation is shared between the two.
"""

from __future__ import annotations

import io
import itertools
import math
import random
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pytest

from phalanx_aio.chaos import (
    CheckResult,
    Operation,
    OpKind,
    Outcome,
    Verdict,
    check_history,
    check_key,
    dump_history,
    load_history,
    read_history,
    write_history,
)
from phalanx_aio.chaos.linearizability import main

OK, FAILED, UNKNOWN = Outcome.OK, Outcome.FAILED, Outcome.UNKNOWN
VALUES = ("a", "b", "c")


# --------------------------------------------------------------------------- the oracle


def _ret(op: Operation) -> float:
    return math.inf if op.outcome is UNKNOWN or op.ret is None else op.ret


def _replay(order: Sequence[Operation]) -> bool:
    """Run ``order`` against a plain dict; False if an ok operation's result disagrees."""
    store: dict[str, str] = {}
    for op in order:
        before = store.get(op.key)
        if op.kind is OpKind.PUT:
            assert op.value is not None
            store[op.key] = op.value
            seen: object = None
        elif op.kind is OpKind.GET:
            seen = before
        elif op.kind is OpKind.DELETE:
            store.pop(op.key, None)
            seen = before is not None
        else:
            if before == op.expected:
                assert op.value is not None
                store[op.key] = op.value
            seen = before
        if op.outcome is OK and op.kind is not OpKind.PUT and seen != op.result:
            return False
    return True


def brute_force(ops: Sequence[Operation]) -> bool:
    """Linearizable iff some subset of the unknown writes plus every ok op has a legal real-time order."""
    live = [op for op in ops if op.outcome is not FAILED and not (op.outcome is UNKNOWN and not op.is_write)]
    sure = [op for op in live if op.outcome is OK]
    maybe = [op for op in live if op.outcome is UNKNOWN]
    for mask in range(1 << len(maybe)):
        chosen = sure + [op for j, op in enumerate(maybe) if mask >> j & 1]
        for perm in itertools.permutations(chosen):
            # Real time: nothing placed later may have returned before something earlier was called.
            if any(_ret(perm[q]) < perm[p].call for p in range(len(perm)) for q in range(p + 1, len(perm))):
                continue
            if _replay(perm):
                return True
    return False


# --------------------------------------------------------------------------- history generators


def _random_op_spec(rng: random.Random, keys: Sequence[str]) -> tuple[OpKind, str, str | None, str | None]:
    kind = rng.choice([OpKind.PUT, OpKind.GET, OpKind.GET, OpKind.DELETE, OpKind.CAS, OpKind.CAS])
    key = rng.choice(keys)
    value = rng.choice(VALUES) if kind in (OpKind.PUT, OpKind.CAS) else None
    expected = rng.choice((*VALUES, None)) if kind is OpKind.CAS else None
    return kind, key, value, expected


def simulate(
    rng: random.Random,
    n_ops: int,
    *,
    clients: int,
    keys: Sequence[str],
    p_unknown: float = 0.1,
    p_failed: float = 0.1,
    max_gap: int = 3,
    max_len: int = 4,
) -> list[Operation]:
    """A history of a real (linearizable) register: each op takes effect at a random instant in its interval.

    Times are small integers so that calls and returns often coincide. An unknown write takes
    effect at a random instant after its call (possibly after it "returned") or not at all; a
    failed op never takes effect.
    """
    clock = [0] * clients
    specs = []
    for op_id in range(n_ops):
        c = rng.randrange(clients)
        call = clock[c] + rng.randint(0, max_gap)
        ret = call + rng.randint(0, max_len)
        clock[c] = ret
        r = rng.random()
        outcome = UNKNOWN if r < p_unknown else FAILED if r < p_unknown + p_failed else OK
        kind, key, value, expected = _random_op_spec(rng, keys)
        if outcome is OK:
            point: float | None = rng.uniform(call, ret)
        elif outcome is UNKNOWN and rng.random() < 0.5:
            point = call + rng.uniform(0, 3 * max_len)
        else:
            point = None
        specs.append((op_id, c, kind, key, value, expected, call, ret, outcome, point))
    store: dict[str, str] = {}
    results: dict[int, str | bool | None] = {}
    effective = sorted((s for s in specs if s[9] is not None), key=lambda s: (s[9], rng.random()))
    for op_id, _, kind, key, value, expected, *_rest in effective:
        before = store.get(key)
        if kind is OpKind.PUT:
            assert value is not None
            store[key] = value
        elif kind is OpKind.DELETE:
            store.pop(key, None)
        elif kind is OpKind.CAS and before == expected:
            assert value is not None
            store[key] = value
        results[op_id] = (before is not None) if kind is OpKind.DELETE else before
    ops = []
    for op_id, c, kind, key, value, expected, call, ret, outcome, _point in specs:
        result = results.get(op_id) if outcome is OK else None
        if kind is OpKind.PUT:
            result = None
        elif kind is OpKind.DELETE and outcome is OK:
            assert isinstance(result, bool)
        recorded_ret = None if outcome is UNKNOWN and rng.random() < 0.5 else float(ret)
        ops.append(
            Operation(op_id, kind, key, float(call), recorded_ret, outcome, value, expected, result, client=c)
        )
    return ops


def scramble(rng: random.Random, ops: Sequence[Operation], p: float = 0.3) -> list[Operation]:
    """Replace the results of some ok reads/deletes/cas with random ones (and flip some outcomes)."""
    out = []
    for op in ops:
        if rng.random() < p:
            ret = op.ret if op.ret is not None else op.call + 1
            if op.kind is OpKind.DELETE:
                op = replace(op, outcome=OK, ret=ret, result=rng.random() < 0.5)
            elif op.kind is not OpKind.PUT:
                op = replace(op, outcome=OK, ret=ret, result=rng.choice((*VALUES, None)))
            else:
                op = replace(op, outcome=rng.choice([OK, FAILED, UNKNOWN]), ret=ret)
        out.append(op)
    return out


# --------------------------------------------------------------------------- agreement with the oracle


def test_agrees_with_brute_force_on_random_histories() -> None:
    rng = random.Random(20261126)
    verdicts = {True: 0, False: 0}
    for trial in range(3000):
        n = rng.randint(1, 6)
        keys = ("x",) if trial % 2 else ("x", "y")
        hist = simulate(rng, n, clients=rng.randint(1, 3), keys=keys, p_unknown=0.15, p_failed=0.1)
        if trial % 3 == 0:
            res = check_history(hist)
            assert res.ok, f"simulated linearizable history rejected (trial {trial}):\n{res.explain()}"
        else:
            hist = scramble(rng, hist)
        expected = brute_force(hist)
        got = check_history(hist)
        assert got.verdict is not Verdict.UNDECIDED
        assert got.ok == expected, f"trial {trial}: checker {got.verdict}, oracle {expected}\n" + "\n".join(
            op.describe() for op in hist
        )
        verdicts[expected] += 1
    assert verdicts[True] > 300 and verdicts[False] > 300, verdicts


def test_simulated_histories_are_linearizable_with_many_clients() -> None:
    rng = random.Random(7)
    for _ in range(200):
        hist = simulate(rng, 40, clients=5, keys=("x", "y", "z"), p_unknown=0.2, p_failed=0.1)
        res = check_history(hist)
        assert res.ok, res.explain()


# --------------------------------------------------------------------------- planted anomalies


def op(
    op_id: int,
    kind: str,
    call: float,
    ret: float | None,
    *,
    value: str | None = None,
    expected: str | None = None,
    result: str | bool | None = None,
    outcome: Outcome = OK,
    key: str = "x",
) -> Operation:
    return Operation(op_id, OpKind(kind), key, call, ret, outcome, value, expected, result)


def check(ops: Sequence[Operation]) -> CheckResult:
    res = check_history(ops)
    assert res.ok == brute_force(ops)
    return res


def test_empty_history_is_linearizable() -> None:
    res = check_history([])
    assert res.ok and res.ops_checked == 0 and res.keys == {}


def test_stale_read_rejected() -> None:
    hist = [
        op(1, "put", 0, 1, value="a"),
        op(2, "put", 2, 3, value="b"),
        op(3, "get", 4, 5, result="a"),
    ]
    res = check(hist)
    assert res.verdict is Verdict.VIOLATION
    [bad] = res.violations
    assert bad.key == "x"
    assert [o.op_id for o in bad.prefix] == [1, 2]
    assert bad.state == "b"
    assert [o.op_id for o in bad.stuck] == [3]
    assert "longest linearizable prefix" in res.explain()


def test_read_concurrent_with_write_may_see_either_value() -> None:
    for seen in ("a", "b"):
        hist = [
            op(1, "put", 0, 1, value="a"),
            op(2, "put", 2, 6, value="b"),
            op(3, "get", 3, 4, result=seen),
        ]
        assert check(hist).ok


def test_lost_write_rejected() -> None:
    hist = [
        op(1, "put", 0, 1, value="a"),
        op(2, "put", 2, 3, value="b"),
        op(3, "get", 4, 5, result="a"),
        op(4, "get", 6, 7, result="a"),
    ]
    assert check(hist).verdict is Verdict.VIOLATION
    never_seen = [op(1, "put", 0, 1, value="a"), op(2, "get", 2, 3, result=None)]
    assert check(never_seen).verdict is Verdict.VIOLATION


def test_double_applied_cas_rejected() -> None:
    hist = [
        op(1, "put", 0, 1, value="a"),
        op(2, "cas", 2, 5, expected="a", value="b", result="a"),
        op(3, "cas", 3, 6, expected="a", value="c", result="a"),
    ]
    res = check(hist)
    assert res.verdict is Verdict.VIOLATION
    # One of the two can win; the other then must have seen the winner's value.
    fixed = [*hist[:2], replace(hist[2], result="b")]
    assert check(fixed).ok


def test_cas_reports_value_found_and_swaps_only_on_match() -> None:
    hist = [
        op(1, "cas", 0, 1, expected=None, value="a", result=None),
        op(2, "cas", 2, 3, expected="z", value="b", result="a"),
        op(3, "get", 4, 5, result="a"),
        op(4, "delete", 6, 7, result=True),
        op(5, "delete", 8, 9, result=False),
        op(6, "get", 10, 11, result=None),
    ]
    assert check(hist).ok
    assert check([*hist[:2], op(3, "get", 4, 5, result="b")]).verdict is Verdict.VIOLATION


def test_unknown_write_that_took_effect_is_accepted() -> None:
    hist = [
        op(1, "put", 0, 1, value="a"),
        op(2, "put", 2, None, value="b", outcome=UNKNOWN),
        op(3, "get", 3, 4, result="a"),
        op(4, "get", 10, 11, result="b"),
        op(5, "get", 12, 13, result="b"),
    ]
    assert check(hist).ok
    # It may also take effect after a recorded return (e.g. a client-side timeout) or never.
    late = [replace(hist[1], ret=2.5), *hist[2:]]
    assert check([hist[0], *late]).ok
    assert check([hist[0], hist[1], op(3, "get", 20, 21, result="a")]).ok
    # But once observed it cannot be undone by nothing.
    flip = [*hist[:4], op(5, "get", 12, 13, result="a")]
    assert check(flip).verdict is Verdict.VIOLATION


def test_unknown_cas_may_take_effect() -> None:
    hist = [
        op(1, "put", 0, 1, value="a"),
        op(2, "cas", 2, 3, expected="a", value="b", outcome=UNKNOWN),
        op(3, "get", 8, 9, result="b"),
    ]
    assert check(hist).ok


def test_failed_write_observed_is_rejected() -> None:
    hist = [
        op(1, "put", 0, 1, value="a", outcome=FAILED),
        op(2, "get", 2, 3, result="a"),
    ]
    res = check(hist)
    assert res.verdict is Verdict.VIOLATION
    assert res.ops_dropped == 1 and res.ops_checked == 1


def test_unknown_reads_constrain_nothing() -> None:
    hist = [
        op(1, "put", 0, 1, value="a"),
        op(2, "get", 2, 3, result="nonsense", outcome=UNKNOWN),
    ]
    res = check(hist)
    assert res.ok and res.ops_dropped == 1


def test_keys_are_independent_and_reported_separately() -> None:
    hist = [
        op(1, "put", 0, 1, value="a", key="x"),
        op(2, "get", 2, 3, result="a", key="x"),
        op(3, "put", 0, 1, value="a", key="y"),
        op(4, "get", 2, 3, result=None, key="y"),
    ]
    res = check(hist)
    assert res.verdict is Verdict.VIOLATION
    assert res.keys["x"].ok and not res.keys["y"].ok
    assert [r.key for r in res.violations] == ["y"]


def test_initial_values() -> None:
    hist = [op(1, "get", 0, 1, result="seed")]
    assert not check_history(hist).ok
    assert check_history(hist, initial={"x": "seed"}).ok


def test_state_budget_gives_undecided() -> None:
    rng = random.Random(3)
    hist = simulate(rng, 60, clients=6, keys=("x",), p_unknown=0.3, p_failed=0.0)
    res = check_history(hist, max_states_per_key=2)
    assert res.verdict is Verdict.UNDECIDED


def test_invalid_operations_rejected() -> None:
    with pytest.raises(ValueError):
        op(1, "get", 5, 4, result=None)
    with pytest.raises(ValueError):
        op(1, "put", 0, 1)
    with pytest.raises(ValueError):
        op(1, "delete", 0, 1, result="yes")
    with pytest.raises(ValueError):
        op(1, "get", 0, None, result=None)
    with pytest.raises(ValueError):
        check_history([op(1, "put", 0, 1, value="a"), op(1, "put", 0, 1, value="b")])
    with pytest.raises(ValueError):
        check_key("y", [op(1, "put", 0, 1, value="a")])


# --------------------------------------------------------------------------- JSON lines and CLI


def test_json_lines_round_trip(tmp_path: Path) -> None:
    hist = simulate(random.Random(11), 50, clients=4, keys=("x", "y"), p_unknown=0.2, p_failed=0.2)
    buf = io.StringIO()
    dump_history(hist, buf)
    assert len(buf.getvalue().splitlines()) == len(hist)
    assert load_history(io.StringIO(buf.getvalue())) == hist
    path = tmp_path / "h.jsonl"
    write_history(path, hist)
    assert read_history(path) == hist


def test_load_history_reports_bad_lines() -> None:
    good = '{"id": 1, "op": "put", "key": "x", "call": 0, "return": 1, "value": "a"}'
    text = f'# comment\n\n{good}\n{{"id": 2}}\n'
    with pytest.raises(ValueError, match="line 4"):
        load_history(io.StringIO(text))


def test_main(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.jsonl"
    bad = tmp_path / "bad.jsonl"
    write_history(good, [op(1, "put", 0, 1, value="a"), op(2, "get", 2, 3, result="a")])
    write_history(bad, [op(1, "put", 0, 1, value="a"), op(2, "get", 2, 3, result="b")])
    assert main([str(good)]) == 0
    assert main([str(good), str(bad)]) == 1
    out = capsys.readouterr().out
    assert "linearizable" in out and "violation" in out and "#2" in out


# --------------------------------------------------------------------------- performance sanity


def test_large_history_checks() -> None:
    rng = random.Random(2026)
    keys = [f"k{i}" for i in range(20)]
    hist = simulate(rng, 2000, clients=8, keys=keys, p_unknown=0.05, p_failed=0.05, max_gap=2, max_len=6)
    res = check_history(hist)
    assert res.ok, res.explain()
    assert len(res.keys) == 20
    assert res.ops_checked + res.ops_dropped == 2000
    # Corrupt one late read: the search must exhaust that key's configurations and say so.
    idx = max(i for i, o in enumerate(hist) if o.kind is OpKind.GET and o.outcome is OK)
    bad = [*hist]
    bad[idx] = replace(bad[idx], result="never-written")
    res = check_history(bad)
    assert res.verdict is Verdict.VIOLATION
    assert [r.key for r in res.violations] == [hist[idx].key]
