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

import functools
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace

from phalanx_aio.errors import OutcomeUnknown
from phalanx_aio.kv._command import KVCommand, KVOp, _decode, decode_command, encode_command
from phalanx_aio.kv._sessions import RESULT_OVERHEAD as RESULT_OVERHEAD
from phalanx_aio.kv._sessions import SESSION_OVERHEAD, SessionLimits, _Session, _session_cost
from phalanx_aio.kv._snapshot_format import _bytes_of, _Decoded, decode_snapshot, encode_snapshot
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


# Why a session was forgotten (kept with its id, so that a late request can be told).
_EXPIRED, _EVICTED_COUNT, _EVICTED_BYTES = 0, 1, 2


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
        self._client_ids: dict[bytes, str] = {}  # this machine's cache of decoded client ids

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
        op, key, value, expected, client_id, seq, acked = _decode(command, self._client_ids)
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
        """The data and the sessions, as bytes (format 2, see ``kv/_snapshot_format.py``), then the
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
                encode_snapshot, self.applied, dict(self.data), sessions, dict(self.forgotten)
            )
        freeze = _Freeze()
        frozen = self._data
        self._freeze, self._delta = freeze, {}
        encode = functools.partial(encode_snapshot, self.applied, frozen, sessions, dict(self.forgotten))

        def build() -> bytes:
            try:
                return encode()
            finally:
                freeze.done = True

        return build

    def restore(self, data: bytes) -> None:
        """Replace the state with a :meth:`snapshot` (of this version or of format 1)."""
        self._install(decode_snapshot(data))

    def restore_later(self, data: bytes) -> Callable[[], Callable[[], None]]:
        """:meth:`restore` in two steps: the returned function decodes ``data`` (in a worker
        thread, in runs of keys so that the loop gets the interpreter between them) and
        returns the function that installs the result (on the loop: a few assignments)."""

        def decode() -> Callable[[], None]:
            return functools.partial(self._install, decode_snapshot(data))

        return decode

    def _install(self, decoded: _Decoded) -> None:
        self.applied, self._data = decoded.applied, decoded.items
        self._delta = self._freeze = None  # a build may go on reading the old dictionary
        self.data_bytes = decoded.data_bytes
        self.sessions = decoded.sessions
        self.forgotten = decoded.forgotten
        self.session_bytes = decoded.session_bytes
