"""The snapshot format of the KV state machine (private): the keys and values column by column,
the sessions, then the ids of forgotten sessions; encoded and decoded as pure functions of their
inputs, safe in a worker thread (see :meth:`KVStateMachine.snapshot_later
<phalanx_aio.kv.state_machine.KVStateMachine.snapshot_later>`). Format 1 is still read.
"""

from __future__ import annotations

import array
import heapq
import itertools
import struct
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from phalanx_aio.errors import ProtocolError
from phalanx_aio.kv._command import _LEN, _fields, _put_field
from phalanx_aio.kv._sessions import _Session, _session_cost

__all__ = ["decode_snapshot", "encode_snapshot"]

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


def _bytes_of(items: dict[bytes, bytes]) -> int:
    """The bytes of every key and value (what the quota counts)."""
    return sum(map(len, items)) + sum(map(len, items.values()))


_TOMBSTONES = b"PXKVTMB1"  # after the sessions: the ids of forgotten sessions (older readers stop before)
_TOMB = struct.Struct(">QB")


def encode_snapshot(
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


@dataclass(slots=True)
class _Decoded:
    """A snapshot decoded, ready to be installed (:meth:`KVStateMachine.restore_later`)."""

    applied: int
    items: dict[bytes, bytes]
    data_bytes: int
    sessions: dict[str, _Session]
    forgotten: dict[str, tuple[int, int]]
    session_bytes: int


def decode_snapshot(data: bytes) -> _Decoded:
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
