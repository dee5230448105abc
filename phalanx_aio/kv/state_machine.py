"""The replicated key-value state machine, with client sessions for exactly-once writes.

Commands are binary records (see :func:`encode_command`). Keys and values are bytes.

Sessions follow the Raft thesis §6.3: a client has an id and numbers its requests; the state
machine remembers the result of each request it applied above the client's acknowledged
number, so a retried request returns the remembered result instead of applying twice.

Sessions are bounded, and every bound is applied by every member at the same command, since
they are part of the replicated state (see :class:`SessionLimits`): a session expires after
``session_ttl`` applied commands unused (*log time*, not wall-clock time); beyond
``max_sessions`` sessions, or ``max_session_bytes`` of remembered results in all, the least
recently used sessions are evicted; one session keeps at most ``max_results_per_session``
results and ``max_result_bytes_per_session`` bytes of them. A forgotten session's id is kept
(bounded too) so that a late request of it is refused with :class:`SessionExpired` instead of
being applied as the first request of a new session.
"""

from __future__ import annotations

import array
import enum
import functools
import heapq
import itertools
import struct
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace

from phalanx_aio.errors import LocalError, OutcomeUnknown, ProtocolError
from phalanx_aio.node.state_machine import StateMachine

__all__ = [
    "KVCommand",
    "KVOp",
    "KVStateMachine",
    "SessionExpired",
    "SessionLimits",
    "decode_command",
    "encode_command",
]


class SessionExpired(OutcomeUnknown):
    """The client's session was forgotten (unused too long, or evicted by a session limit), or
    the result of this request was: the request may or may not have been applied before; open
    a new session. The text names the limit that forgot it."""


class KVOp(enum.IntEnum):
    """Operations of the KV state machine."""

    PUT = 1
    DELETE = 2
    CAS = 3


@dataclass(frozen=True, slots=True)
class KVCommand:
    """One write. ``client_id`` empty means no session (at-least-once on retries)."""

    op: KVOp
    key: bytes
    value: bytes = b""
    expected: bytes | None = None
    """CAS: the value the key must hold (``None``: the key must be absent)."""
    client_id: str = ""
    seq: int = 0
    acked: int = 0
    """The client has received every result up to this number: older ones may be forgotten."""


_HEAD = struct.Struct(">BBQQ")  # version, op, seq, acked
_VERSION = 1
_MAX_FIELD = 64 << 20


def _put_field(out: list[bytes], data: bytes) -> None:
    out.append(struct.pack(">I", len(data)))
    out.append(data)


def encode_command(cmd: KVCommand) -> bytes:
    """The log bytes of ``cmd``."""
    if not isinstance(cmd.key, bytes) or not isinstance(cmd.value, bytes):
        raise LocalError("KV keys and values must be bytes")
    out = [_HEAD.pack(_VERSION, int(cmd.op), cmd.seq, cmd.acked)]
    _put_field(out, cmd.client_id.encode())
    _put_field(out, cmd.key)
    _put_field(out, cmd.value)
    if cmd.expected is None:
        out.append(b"\x00")
    else:
        out.append(b"\x01")
        _put_field(out, cmd.expected)
    return b"".join(out)


def _fields(data: bytes, pos: int) -> Iterator[bytes]:
    while True:
        if pos + 4 > len(data):
            raise ProtocolError("truncated KV command")
        (n,) = struct.unpack_from(">I", data, pos)
        if n > _MAX_FIELD or pos + 4 + n > len(data):
            raise ProtocolError("KV command field length out of range")
        yield data[pos + 4 : pos + 4 + n]
        pos += 4 + n


_LEN = struct.Struct(">I")

# Snapshot format 2: a magic (format 1 began with the applied count, a big-endian u64 that
# can never start with these bytes), the applied count, the number of keys and of sessions;
# then every key's length, every value's length (u32, little-endian), every key, every value
# (keys sorted, so equal states give equal bytes); then the sessions as in format 1. Built and
# parsed column by column in C: about five times faster than one record per key.
_SNAP_MAGIC = b"PXKVSNP2"
_SNAP_V2 = struct.Struct(">8sQII")
_U32 = next(code for code in "IL" if array.array(code).itemsize == 4)


def _u32_column(values: Iterator[int]) -> bytes:
    col = array.array(_U32, values)
    if sys.byteorder != "little":  # pragma: no cover - big-endian hosts
        col.byteswap()
    return col.tobytes()


# Keys encoded per step of _encode_items. Each step is a few C calls that hold the GIL
# throughout (a few milliseconds for this many keys); between steps the interpreter can hand
# the GIL to the event loop's thread, which a single call over a million keys would keep
# waiting for hundreds of milliseconds (see docs/performance.md, "Large state").
_ENCODE_STEP = 16_384


def _sorted_keys(data: Mapping[bytes, bytes]) -> list[bytes]:
    """``sorted(data)`` in steps: one ``sorted`` over a million keys inserted in random order
    holds the GIL for about a second, and even ``list(data)`` is one long C call; the keys are
    taken and sorted in runs of :data:`_ENCODE_STEP`, merged by :func:`heapq.merge` (Python
    code), so the interpreter can switch threads between runs and between keys."""
    it = iter(data)
    runs = []
    while run := sorted(itertools.islice(it, _ENCODE_STEP)):
        runs.append(run)
    if len(runs) <= 1:
        return runs[0] if runs else []
    return list(heapq.merge(*runs))


def _encode_items(data: Mapping[bytes, bytes]) -> bytes:
    keys = _sorted_keys(data)
    klens: list[bytes] = []
    vlens: list[bytes] = []
    kparts: list[bytes] = []
    vparts: list[bytes] = []
    for i in range(0, len(keys), _ENCODE_STEP):
        ks = keys[i : i + _ENCODE_STEP]
        vs = list(map(data.__getitem__, ks))
        klens.append(_u32_column(map(len, ks)))
        vlens.append(_u32_column(map(len, vs)))
        kparts.append(b"".join(ks))
        vparts.append(b"".join(vs))
    return b"".join(itertools.chain(klens, vlens, kparts, vparts))


def _decode_items(data: bytes, pos: int, n: int) -> tuple[dict[bytes, bytes], int, int]:
    """The ``n`` keys and values of format 2 at ``pos``, the position after them, and the
    bytes of the keys and values together. Built in runs of :data:`_ENCODE_STEP` keys (a few
    C calls each), so that a worker thread decoding a million keys lets the loop run between
    runs."""
    end_of_lengths = pos + 8 * n
    if end_of_lengths > len(data):
        raise ProtocolError("truncated KV snapshot (lengths)")
    lengths = array.array(_U32)
    lengths.frombytes(data[pos:end_of_lengths])
    if sys.byteorder != "little":  # pragma: no cover - big-endian hosts
        lengths.byteswap()
    klens, vlens = lengths[:n], lengths[n:]
    kpos = end_of_lengths
    vpos = kpos + sum(klens)
    end = vpos + sum(vlens)
    if end > len(data):
        raise ProtocolError("truncated KV snapshot (keys and values)")
    items: dict[bytes, bytes] = {}
    cut = data.__getitem__
    for i in range(0, n, _ENCODE_STEP):
        koffs = list(itertools.accumulate(klens[i : i + _ENCODE_STEP], initial=kpos))
        voffs = list(itertools.accumulate(vlens[i : i + _ENCODE_STEP], initial=vpos))
        kpos, vpos = koffs[-1], voffs[-1]
        keys = map(cut, map(slice, koffs[:-1], koffs[1:]))
        items.update(zip(keys, map(cut, map(slice, voffs[:-1], voffs[1:])), strict=True))
    if len(items) != n:
        raise ProtocolError("KV snapshot holds a key twice")
    return items, end, end - end_of_lengths


_OPS = {int(op): op for op in KVOp}


def _take(data: bytes, pos: int) -> tuple[bytes, int]:
    """The length-prefixed field at ``pos`` and the position after it."""
    if pos + 4 > len(data):
        raise ProtocolError("truncated KV command")
    (n,) = _LEN.unpack_from(data, pos)
    end = pos + 4 + n
    if n > _MAX_FIELD or end > len(data):
        raise ProtocolError("KV command field length out of range")
    return data[pos + 4 : end], end


def decode_command(data: bytes) -> KVCommand:
    """Inverse of :func:`encode_command`; raises :class:`ProtocolError` on malformed bytes."""
    return KVCommand(*_decode(data))


_Fields = tuple[KVOp, bytes, bytes, bytes | None, str, int, int]


_MIN_COMMAND = _HEAD.size + 4 + 4 + 4 + 1
_client_ids: dict[bytes, str] = {}  # decoded client ids (a few sessions write most commands)


def _decode(data: bytes) -> _Fields:
    """The fields of the command in ``data``, in :class:`KVCommand`'s order (no object built).
    Parsed in place rather than with :func:`_take`: every member decodes every command it applies."""
    end = len(data)
    if end < _MIN_COMMAND:
        raise ProtocolError("truncated KV command")
    version, op, seq, acked = _HEAD.unpack_from(data)
    if version != _VERSION:
        raise ProtocolError(f"unknown KV command version {version}")
    kop = _OPS.get(op)
    if kop is None:
        raise ProtocolError(f"unknown KV operation {op}")
    b = _HEAD.size
    parts: list[bytes] = []
    for after in (4, 4, 1):  # client id, key, value; then another length, the length, the CAS flag
        (n,) = _LEN.unpack_from(data, b)
        a = b + 4
        b = a + n
        if n > _MAX_FIELD or b + after > end:
            raise ProtocolError("KV command field length out of range")
        parts.append(data[a:b])
    client, key, value = parts
    flag = data[b]
    expected: bytes | None = None
    if flag == 1:
        expected, b = _take(data, b + 1)
    elif flag == 0:
        b += 1
    else:
        raise ProtocolError("malformed CAS flag in KV command")
    if b != end:
        raise ProtocolError("trailing bytes after KV command")
    client_id = _client_ids.get(client)
    if client_id is None:
        try:
            client_id = client.decode()
        except UnicodeDecodeError:
            raise ProtocolError("KV client id is not UTF-8") from None
        if len(_client_ids) >= 1024:
            _client_ids.clear()
        _client_ids[client] = client_id
    return kop, key, value, expected, client_id, seq, acked


_MISSING: object = object()  # not in the overlay: look in the frozen dictionary
_GONE: object = object()  # in the overlay: deleted since the dictionary was frozen


class _Freeze:
    """One snapshot build: the worker thread sets ``done`` once it no longer reads the frozen
    dictionary, and the loop may then fold the overlay back into it."""

    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = False


def _look(base: dict[bytes, bytes], delta: dict[bytes, object], key: bytes) -> bytes | None:
    """The value of ``key`` in the overlay ``delta`` over the frozen ``base`` (None: absent)."""
    value = delta.get(key, _MISSING)
    if value is _MISSING:
        return base.get(key)
    if value is _GONE:
        return None
    assert isinstance(value, bytes)
    return value


def _bytes_of(items: dict[bytes, bytes]) -> int:
    """The bytes of every key and value (what the quota counts)."""
    return sum(map(len, items)) + sum(map(len, items.values()))


class _Overlay(Mapping[bytes, bytes]):
    """The live keys and values while a snapshot build reads the frozen dictionary: the
    overlay's writes (and deletions) over the frozen ones. Read-only; every method but
    ``__getitem__`` and ``__contains__`` walks all keys."""

    __slots__ = ("_base", "_delta")

    def __init__(self, base: dict[bytes, bytes], delta: dict[bytes, object]) -> None:
        self._base = base
        self._delta = delta

    def __getitem__(self, key: bytes) -> bytes:
        value = _look(self._base, self._delta, key)
        if value is None:
            raise KeyError(key)
        return value

    def __iter__(self) -> Iterator[bytes]:
        delta = self._delta
        for key, value in delta.items():
            if value is not _GONE:
                yield key
        for key in self._base:
            if key not in delta:
                yield key

    def __len__(self) -> int:
        base = self._base
        return len(base) + sum((value is not _GONE) - (key in base) for key, value in self._delta.items())


@dataclass(frozen=True, slots=True)
class SessionLimits:
    """The bounds on client sessions (:class:`KVStateMachine`).

    They are rules of the replicated state machine: **every member must use the same values**,
    or members would forget different sessions and answer a retried write differently. Costs are
    counted in bytes of remembered results plus a fixed allowance per session
    (:data:`SESSION_OVERHEAD` plus its id) and per result (:data:`RESULT_OVERHEAD`), so that
    they depend only on the replicated state.
    """

    session_ttl: int = 100_000
    """A session unused for this many applied commands expires (checked every 1,024)."""
    max_sessions: int = 50_000
    """Sessions kept; opening one more evicts the least recently used."""
    max_session_bytes: int = 64 << 20
    """The cost of every session together; above it the least recently used are evicted."""
    max_results_per_session: int = 4096
    """Unacknowledged results one session keeps; beyond it the oldest is forgotten."""
    max_result_bytes_per_session: int = 4 << 20
    """The cost of one session's results; beyond it the oldest are forgotten (the newest is
    always kept)."""

    def __post_init__(self) -> None:
        for name in (
            "session_ttl",
            "max_sessions",
            "max_session_bytes",
            "max_results_per_session",
            "max_result_bytes_per_session",
        ):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise LocalError(f"SessionLimits.{name} must be a positive int, not {value!r}")


SESSION_OVERHEAD = 256
"""The cost counted for each session besides its id and results (its record and slots)."""
RESULT_OVERHEAD = 64
"""The cost counted for each remembered result besides the bytes of a bytes result."""

# Why a session was forgotten (kept with its id, so that a late request can be told).
_EXPIRED, _EVICTED_COUNT, _EVICTED_BYTES = 0, 1, 2
_TOMBSTONES = b"PXKVTMB1"  # after the sessions: the ids of forgotten sessions (older readers stop before)
_TOMB = struct.Struct(">QB")


def _encode_snapshot(
    applied: int,
    data: Mapping[bytes, bytes],
    sessions: list[tuple[str, int, int, dict[int, object]]],
    forgotten: dict[str, tuple[int, int]],
) -> bytes:
    """The bytes of :meth:`KVStateMachine.snapshot` for this copy of the state."""
    out = [_SNAP_V2.pack(_SNAP_MAGIC, applied, len(data), len(sessions))]
    out.append(_encode_items(data))
    for cid, last_used, acked, results in sorted(sessions):
        _put_field(out, cid.encode())
        out.append(struct.pack(">QQI", last_used, acked, len(results)))
        for seq in sorted(results):
            r = results[seq]
            if isinstance(r, bytes):
                out.append(struct.pack(">QB", seq, 3))
                _put_field(out, r)
            else:
                out.append(struct.pack(">QB", seq, 0 if r is None else (1 if r is True else 2)))
    if forgotten:
        out.append(_TOMBSTONES)
        out.append(_LEN.pack(len(forgotten)))
        for cid, (at, why) in forgotten.items():  # oldest first: the order is state
            _put_field(out, cid.encode())
            out.append(_TOMB.pack(at, why))
    return b"".join(out)


def _result_cost(result: object) -> int:
    return RESULT_OVERHEAD + len(result) if isinstance(result, bytes) else RESULT_OVERHEAD


@dataclass(slots=True)
class _Session:
    last_used: int
    results: dict[int, object]
    acked: int = 0
    last_seq: int = 0
    """The highest number with a result remembered so far."""
    in_order: bool = True
    """``results`` was filled in increasing order of number (so the lowest come first)."""
    cost: int = 0
    """What the results count against the limits (:func:`_result_cost` of each)."""

    def forget_up_to(self, acked: int) -> None:
        """Forget every result numbered ``acked`` or below."""
        results = self.results
        if self.in_order:  # the usual case: the lowest numbers come first
            while results:
                first = next(iter(results))
                if first > acked:
                    break
                r = results.pop(first)
                self.cost -= RESULT_OVERHEAD + len(r) if r.__class__ is bytes else RESULT_OVERHEAD
        else:
            for s in [s for s in results if s <= acked]:
                self.cost -= _result_cost(results.pop(s))
        if not results:
            self.in_order = True

    def forget_oldest(self) -> None:
        """Forget the lowest-numbered result, and treat its number as acknowledged: a retry of
        it (or of anything below) is then refused instead of being applied a second time."""
        results = self.results
        oldest = next(iter(results)) if self.in_order else min(results)
        self.cost -= _result_cost(results.pop(oldest))
        self.acked = max(self.acked, oldest)

    def remember(self, seq: int, result: object) -> None:
        """Keep the result of request ``seq``."""
        if seq < self.last_seq:
            self.in_order = False
        else:
            self.last_seq = seq
        self.results[seq] = result
        self.cost += RESULT_OVERHEAD + len(result) if result.__class__ is bytes else RESULT_OVERHEAD


def _session_cost(cid: str, sess: _Session) -> int:
    return SESSION_OVERHEAD + len(cid) + sess.cost


class KVStateMachine(StateMachine):
    """A dict of bytes to bytes with exactly-once client sessions.

    ``apply`` returns: PUT -> the previous value (``None`` if the key was absent); DELETE ->
    whether the key existed; CAS -> the value the key held before (``None`` if absent): the swap
    happened exactly when that equals ``expected``. A retried request (same client and number)
    returns the first result.

    Sessions are bounded by ``limits`` (a :class:`SessionLimits`; the keyword arguments
    ``session_ttl`` and ``max_results_per_session`` override its fields). A write of a
    forgotten session, or whose result was forgotten, raises :class:`SessionExpired` naming the
    limit. Up to ``max_sessions`` ids of forgotten sessions are kept, oldest dropped first.
    """

    def __init__(
        self,
        *,
        limits: SessionLimits | None = None,
        session_ttl: int | None = None,
        max_results_per_session: int | None = None,
    ) -> None:
        limits = limits if limits is not None else SessionLimits()
        given = {"session_ttl": session_ttl, "max_results_per_session": max_results_per_session}
        overrides = {name: value for name, value in given.items() if value is not None}
        if overrides:
            limits = replace(limits, **overrides)
        self.limits = limits
        """The session limits (the same on every member)."""
        self._data: dict[bytes, bytes] = {}
        # While a snapshot build reads _data in a worker thread, _data is frozen and the
        # writes go to _delta (a deletion as _GONE); folded back once the build is done.
        self._delta: dict[bytes, object] | None = None
        self._freeze: _Freeze | None = None
        self.data_bytes = 0
        """The bytes of every key and value held (what the KV service's quota counts)."""
        self.sessions: dict[str, _Session] = {}
        """Client id -> session, least recently used first."""
        self.forgotten: dict[str, tuple[int, int]] = {}
        """Ids of forgotten sessions -> (the applied count then, why), oldest first."""
        self.session_bytes = 0
        """The cost of every session together (see :class:`SessionLimits`)."""
        self.sessions_evicted = 0
        """Sessions forgotten by a limit or by expiry since this object was created or restored
        (local, not part of the replicated state)."""
        self.applied = 0
        """Commands applied (the state machine's clock for session expiry)."""

    @property
    def session_ttl(self) -> int:
        """Applied commands after which an unused session expires."""
        return self.limits.session_ttl

    @property
    def max_results(self) -> int:
        """Unacknowledged results kept per session."""
        return self.limits.max_results_per_session

    @property
    def data(self) -> Mapping[bytes, bytes]:
        """Every key and its value. Read it, never change it (only :meth:`apply` does): it is
        the dictionary itself, or, while a snapshot is being encoded from a frozen copy, a
        read-only view of the frozen copy and the writes since (see :meth:`snapshot_later`)."""
        delta = self._delta
        if delta is None:
            return self._data
        if self._fold_if_done():
            return self._data
        return _Overlay(self._data, delta)

    @data.setter
    def data(self, items: Mapping[bytes, bytes]) -> None:
        self._data = dict(items)
        self._delta = self._freeze = None
        self.data_bytes = _bytes_of(self._data)

    def get(self, key: bytes) -> bytes | None:
        """The value of ``key`` (run it through ``RaftNode.read`` for linearizability)."""
        delta = self._delta
        if delta is not None and not self._fold_if_done():
            return _look(self._data, delta, key)
        return self._data.get(key)

    def _fold_if_done(self) -> bool:
        """Fold the overlay into the dictionary if the build reading it has finished."""
        freeze, delta = self._freeze, self._delta
        if freeze is None or delta is None or not freeze.done:
            return False
        data = self._data
        for key, value in delta.items():
            if value is _GONE:
                data.pop(key, None)  # it may have been added and deleted during the build
            else:
                data[key] = value  # type: ignore[assignment]
        self._delta = self._freeze = None
        return True

    def apply(self, command: bytes) -> object:
        """Apply one encoded :class:`KVCommand`."""
        op, key, value, expected, client_id, seq, acked = _decode(command)
        self.applied += 1
        if self.applied % 1024 == 0:
            self._expire()
        if not client_id:
            return self._execute(op, key, value, expected)
        sessions = self.sessions
        sess = sessions.get(client_id)
        if sess is None:
            gone = self.forgotten.get(client_id)
            if gone is not None:
                raise SessionExpired(self._why_forgotten(client_id, *gone))
            if seq > 1 and acked > 0:
                # The client had a session that has since expired: its earlier requests may
                # have applied; we cannot tell, so we refuse rather than risk a double apply.
                raise SessionExpired(f"session {client_id!r} expired; open a new one")
            if len(sessions) >= self.limits.max_sessions:
                self._evict(next(iter(sessions)), _EVICTED_COUNT)
            sess = sessions[client_id] = _Session(self.applied, {})
            self.session_bytes += SESSION_OVERHEAD + len(client_id)
        elif next(reversed(sessions)) != client_id:
            sessions[client_id] = sessions.pop(client_id)  # now the most recently used
        sess.last_used = self.applied
        before = sess.cost
        if acked > sess.acked:
            sess.acked = acked
            sess.forget_up_to(acked)
        results = sess.results
        if seq in results:
            self.session_bytes += sess.cost - before
            return results[seq]
        if seq <= sess.acked:
            self.session_bytes += sess.cost - before
            raise SessionExpired(
                f"request {seq} of {client_id!r} was already acknowledged, or its result forgotten "
                f"(a session keeps {self.limits.max_results_per_session} results and "
                f"{self.limits.max_result_bytes_per_session} bytes of them)"
            )
        result = self._execute(op, key, value, expected)
        sess.remember(seq, result)
        limits = self.limits
        if len(results) > limits.max_results_per_session or sess.cost > limits.max_result_bytes_per_session:
            while len(results) > 1 and (
                len(results) > limits.max_results_per_session
                or sess.cost > limits.max_result_bytes_per_session
            ):
                sess.forget_oldest()
        self.session_bytes += sess.cost - before
        if self.session_bytes > limits.max_session_bytes:
            self._shrink(client_id)
        return result

    def _why_forgotten(self, client_id: str, at: int, why: int) -> str:
        limits = self.limits
        reason = {
            _EXPIRED: f"expired after {limits.session_ttl} applied commands unused",
            _EVICTED_COUNT: f"evicted to stay within max_sessions ({limits.max_sessions})",
            _EVICTED_BYTES: f"evicted to stay within max_session_bytes ({limits.max_session_bytes})",
        }.get(why, "forgotten")
        return f"session {client_id!r} was {reason} (at applied command {at}); open a new one"

    def _evict(self, client_id: str, why: int) -> None:
        """Forget session ``client_id``, remembering its id (bounded, oldest dropped first)."""
        sess = self.sessions.pop(client_id)
        self.session_bytes -= _session_cost(client_id, sess)
        self.sessions_evicted += 1
        forgotten = self.forgotten
        forgotten[client_id] = (self.applied, why)
        while len(forgotten) > self.limits.max_sessions:
            del forgotten[next(iter(forgotten))]

    def _shrink(self, keep: str) -> None:
        """Evict the least recently used sessions (never ``keep``) until within the bytes limit."""
        sessions = self.sessions
        limit = self.limits.max_session_bytes
        while self.session_bytes > limit and len(sessions) > 1:
            oldest = next(iter(sessions))
            if oldest == keep:  # pragma: no cover - keep is the most recently used
                break
            self._evict(oldest, _EVICTED_BYTES)

    def _execute(self, op: KVOp, key: bytes, value: bytes, expected: bytes | None) -> object:
        if self._delta is not None and not self._fold_if_done():
            return self._execute_over(op, key, value, expected)
        data = self._data
        if op is KVOp.PUT:
            previous = data.get(key)
            data[key] = value
            self.data_bytes += len(key) + len(value) if previous is None else len(value) - len(previous)
            return previous
        if op is KVOp.DELETE:
            gone = data.pop(key, None)
            if gone is None:
                return False
            self.data_bytes -= len(key) + len(gone)
            return True
        current = data.get(key)
        if current == expected:
            data[key] = value
            self.data_bytes += len(key) + len(value) if current is None else len(value) - len(current)
        return current

    def _execute_over(self, op: KVOp, key: bytes, value: bytes, expected: bytes | None) -> object:
        """:meth:`_execute` while a build reads the frozen dictionary: through the overlay."""
        delta = self._delta
        assert delta is not None
        current = _look(self._data, delta, key)
        if op is KVOp.DELETE:
            if current is None:
                return False
            delta[key] = _GONE
            self.data_bytes -= len(key) + len(current)
            return True
        if op is KVOp.PUT or current == expected:
            delta[key] = value
            self.data_bytes += len(key) + len(value) if current is None else len(value) - len(current)
        return current

    def _expire(self) -> None:
        horizon = self.applied - self.limits.session_ttl
        sessions = self.sessions
        while sessions:  # least recently used first: stop at the first one still in use
            cid = next(iter(sessions))
            if sessions[cid].last_used >= horizon:
                break
            self._evict(cid, _EXPIRED)

    def session_stats(self) -> dict[str, int]:
        """``sessions``, ``session_bytes``, ``forgotten_sessions`` (ids kept) and
        ``sessions_evicted`` (forgotten by this object; local), for metrics."""
        return {
            "sessions": len(self.sessions),
            "session_bytes": self.session_bytes,
            "forgotten_sessions": len(self.forgotten),
            "sessions_evicted": self.sessions_evicted,
        }

    def snapshot(self) -> bytes:
        """The data and the sessions, as bytes (format 2, see :func:`_encode_items`), then the
        ids of forgotten sessions (a section older versions stop before)."""
        return self.snapshot_later()()

    def snapshot_later(self) -> Callable[[], bytes]:
        """The state as it is now, and the function that encodes it as :meth:`snapshot`
        would, to run in a worker thread while the node goes on applying.

        Nothing is copied key by key on the loop (that alone stalls it for a large state, see
        docs/performance.md): the key-value dictionary is frozen as it is, and until the
        function has run, :meth:`apply` writes to an overlay that reads fall through; the
        first write after that folds the overlay back in, at a cost in proportion to the keys
        written meanwhile. The sessions (bounded by :class:`SessionLimits`) are copied."""
        self._fold_if_done()
        sessions = [(cid, s.last_used, s.acked, dict(s.results)) for cid, s in self.sessions.items()]
        if self._delta is not None:  # a build is still reading the frozen dictionary
            return functools.partial(
                _encode_snapshot, self.applied, dict(self.data), sessions, dict(self.forgotten)
            )
        freeze = _Freeze()
        frozen = self._data
        self._freeze, self._delta = freeze, {}
        encode = functools.partial(_encode_snapshot, self.applied, frozen, sessions, dict(self.forgotten))

        def build() -> bytes:
            try:
                return encode()
            finally:
                freeze.done = True

        return build

    def restore(self, data: bytes) -> None:
        """Replace the state with a :meth:`snapshot` (of this version or of format 1)."""
        self._install(_decode_snapshot(data))

    def restore_later(self, data: bytes) -> Callable[[], Callable[[], None]]:
        """:meth:`restore` in two steps: the returned function decodes ``data`` (in a worker
        thread, in runs of keys so that the loop gets the interpreter between them) and
        returns the function that installs the result (on the loop: a few assignments)."""

        def decode() -> Callable[[], None]:
            return functools.partial(self._install, _decode_snapshot(data))

        return decode

    def _install(self, decoded: _Decoded) -> None:
        self.applied, self._data = decoded.applied, decoded.items
        self._delta = self._freeze = None  # a build may go on reading the old dictionary
        self.data_bytes = decoded.data_bytes
        self.sessions = decoded.sessions
        self.forgotten = decoded.forgotten
        self.session_bytes = decoded.session_bytes


@dataclass(slots=True)
class _Decoded:
    """A snapshot decoded, ready to be installed (:meth:`KVStateMachine.restore_later`)."""

    applied: int
    items: dict[bytes, bytes]
    data_bytes: int
    sessions: dict[str, _Session]
    forgotten: dict[str, tuple[int, int]]
    session_bytes: int


def _decode_snapshot(data: bytes) -> _Decoded:
    """Decode a :meth:`KVStateMachine.snapshot` (of this version or of format 1); a pure
    function of ``data``, safe in a worker thread."""
    if data[:8] == _SNAP_MAGIC:
        _, applied, nkeys, nsess = _SNAP_V2.unpack_from(data)
        items, pos, data_bytes = _decode_items(data, _SNAP_V2.size, nkeys)
    else:  # format 1: applied, counts, then each key and value length-prefixed
        applied, nkeys, nsess = struct.unpack_from(">QII", data)
        pos = 16
        items = {}
        it = _fields(data, pos)
        for _ in range(nkeys):
            k, v = next(it), next(it)
            items[k] = v
            pos += 8 + len(k) + len(v)
        data_bytes = _bytes_of(items)
    sessions: list[tuple[int, str, _Session]] = []
    for _ in range(nsess):
        cid = next(_fields(data, pos))
        pos += 4 + len(cid)
        last_used, acked, n = struct.unpack_from(">QQI", data, pos)
        pos += 20
        sess = _Session(last_used, {}, acked)
        for _ in range(n):
            seq, tag = struct.unpack_from(">QB", data, pos)
            pos += 9
            if tag == 3:  # a bytes result (a previous value), length-prefixed
                value = next(_fields(data, pos))
                pos += 4 + len(value)
                sess.remember(seq, value)
            else:
                sess.remember(seq, None if tag == 0 else (tag == 1))
        sessions.append((last_used, cid.decode(), sess))
    forgotten: dict[str, tuple[int, int]] = {}
    if data[pos : pos + len(_TOMBSTONES)] == _TOMBSTONES:
        pos += len(_TOMBSTONES)
        (count,) = _LEN.unpack_from(data, pos)
        pos += 4
        for _ in range(count):
            cid = next(_fields(data, pos))
            pos += 4 + len(cid)
            forgotten[cid.decode()] = _TOMB.unpack_from(data, pos)
            pos += _TOMB.size
    sessions.sort(key=lambda item: (item[0], item[1]))  # least recently used first, as applied
    by_id = {cid: sess for _, cid, sess in sessions}
    return _Decoded(
        applied,
        items,
        data_bytes,
        by_id,
        forgotten,
        sum(_session_cost(cid, sess) for cid, sess in by_id.items()),
    )
