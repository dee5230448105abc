"""Canonical encodings and checksums of the stored rows (private).

Every checksum is a CRC-32 over a fixed binary layout of the row's fields, so a row whose bytes
changed on disk (or that was moved to another key) no longer matches. The layouts are part of
the on-disk format: changing one needs a new schema version.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Iterable, Sequence
from operator import attrgetter

from phalanx_aio._entry_batch import BatchCache, decode_entries_at, entry_parts
from phalanx_aio.core.types import ConfState, Entry, HardState

__all__ = [
    "batch_crc",
    "batch_rows",
    "decode_batch",
    "decode_conf_state",
    "encode_conf_state",
    "entry_crc",
    "entry_crcs",
    "hard_state_crc",
    "hard_state_row",
    "identity_crc",
    "snapshot_crc",
]

_ENTRY_HEAD = struct.Struct(">QQB")  # index, term, type
_HARD_HEAD = struct.Struct(">QQ")  # term, commit
_SNAP_HEAD = struct.Struct(">QQQ")  # index, term, len(conf)
_IDENT_HEAD = struct.Struct(">II")  # schema version, len(node id)
_BATCH_HEAD = struct.Struct(">QQ")  # first index, last index

_crc32 = zlib.crc32
_pack_entry = _ENTRY_HEAD.pack
_index_of = attrgetter("index")


def entry_crc(index: int, term: int, type_: int, data: bytes) -> int:
    """Checksum of one log entry of a schema 1 store (a row per entry): its index, term, type
    and payload."""
    return _crc32(data, _crc32(_pack_entry(index, term, type_)))


def entry_crcs(
    indexes: Iterable[int], terms: Iterable[int], types: Iterable[int], datas: Iterable[bytes]
) -> list[int]:
    """:func:`entry_crc` of many entries given column by column (same values, one pass in C).

    Raises ``TypeError``, ``struct.error`` or ``OverflowError`` if a value has the wrong type
    or range (a payload that is not bytes, an index that is not a 64-bit unsigned integer).
    """
    # CRC-32 is a running checksum: crc32(head + data) == crc32(data, crc32(head)), and the
    # second form copies no payload.
    return list(map(_crc32, datas, map(_crc32, map(_pack_entry, indexes, terms, types))))


def batch_crc(first: int, last: int, blob: bytes) -> int:
    """Checksum of one ``entry_batches`` row: the indexes it claims and its blob."""
    return _crc32(blob, _crc32(_BATCH_HEAD.pack(first, last)))


def batch_rows(
    entries: Sequence[Entry], per_row: int, cache: BatchCache | None = None
) -> list[tuple[int, int, bytes, int]]:
    """The ``entry_batches`` rows of contiguous ``entries``: ``(first, last, blob, crc)``, at
    most ``per_row`` entries each.

    The blob is the packed batch layout that the transport also sends (``_entry_batch``); if
    the same entry objects were just encoded for a follower (with the same ``cache``, the
    node's), that encoding is reused. Raises :class:`~phalanx_aio._entry_batch.EncodeError`
    naming an entry that cannot be encoded.
    """
    rows = []
    for start in range(0, len(entries), per_row):
        chunk = entries if len(entries) <= per_row else entries[start : start + per_row]
        parts, _ = entry_parts(chunk, per_row, cache, remember=False)
        blob = b"".join(parts)
        first, last = chunk[0].index, chunk[-1].index
        rows.append((first, last, blob, batch_crc(first, last, blob)))
    return rows


def decode_batch(
    blob: bytes, first: int, last: int, terms_seen: dict[int, int] | None = None
) -> tuple[Entry, ...]:
    """The entries of an ``entry_batches`` row whose checksum matched.

    Raises :class:`~phalanx_aio.errors.ProtocolError` if the blob is malformed, and
    ``ValueError`` unless it holds exactly the entries ``first .. last``, in order.
    """
    count = last - first + 1
    if count < 1:
        raise ValueError(f"the row claims entries {first}..{last}")
    entries = decode_entries_at(blob, 0, len(blob), count, terms_seen)
    if list(map(_index_of, entries)) != list(range(first, last + 1)):
        held = f"{entries[0].index}..{entries[-1].index}" if entries else "none"
        raise ValueError(f"the row claims entries {first}..{last} but holds {len(entries)} ({held})")
    return entries


def hard_state_crc(term: int, vote: str | None, commit: int) -> int:
    """Checksum of the hard state (a missing vote and an empty vote differ)."""
    tail = b"\x00" if vote is None else b"\x01" + vote.encode("utf-8")
    return _crc32(tail, _crc32(_HARD_HEAD.pack(term, commit)))


def hard_state_row(hs: HardState) -> tuple[int, str | None, int, int]:
    """``(term, vote, commit, crc)`` for the ``hard_state`` table."""
    return (hs.term, hs.vote, hs.commit, hard_state_crc(hs.term, hs.vote, hs.commit))


def snapshot_crc(index: int, term: int, conf: bytes, data: bytes) -> int:
    """Checksum of a snapshot: its metadata, its encoded configuration and all of its data."""
    return _crc32(data, _crc32(conf, _crc32(_SNAP_HEAD.pack(index, term, len(conf)))))


def identity_crc(schema_version: int, node_id: str, cluster_id: str) -> int:
    """Checksum of the identity row."""
    node = node_id.encode("utf-8")
    return _crc32(
        cluster_id.encode("utf-8"), _crc32(node, _crc32(_IDENT_HEAD.pack(schema_version, len(node))))
    )


def encode_conf_state(conf: ConfState) -> bytes:
    """A canonical encoding of ``conf`` that keeps the order of ``contexts`` (so it round-trips)."""
    doc: dict[str, object] = {
        "voters": sorted(conf.voters),
        "learners": sorted(conf.learners),
        "contexts": [[nid, ctx.hex()] for nid, ctx in conf.contexts],
    }
    # Written only when present: a configuration without them encodes as before.
    if conf.voters_outgoing:
        doc["voters_outgoing"] = sorted(conf.voters_outgoing)
    if conf.removed:
        doc["removed"] = [[nid, index] for nid, index in conf.removed]
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode("utf-8")


def decode_conf_state(raw: bytes) -> ConfState:
    """Inverse of :func:`encode_conf_state`; raises ``ValueError`` on malformed input."""
    try:
        doc = json.loads(raw)
        voters = frozenset(_strs(doc["voters"]))
        learners = frozenset(_strs(doc["learners"]))
        contexts = tuple((str(nid), bytes.fromhex(ctx)) for nid, ctx in doc["contexts"])
        outgoing = frozenset(_strs(doc.get("voters_outgoing", [])))
        removed = tuple((str(nid), int(index)) for nid, index in doc.get("removed", []))
    except (KeyError, TypeError, AttributeError, UnicodeDecodeError) as exc:
        raise ValueError(f"malformed configuration: {exc}") from exc
    return ConfState(
        voters=voters, learners=learners, contexts=contexts, voters_outgoing=outgoing, removed=removed
    )


def _strs(items: object) -> list[str]:
    if not isinstance(items, list) or not all(isinstance(x, str) for x in items):
        raise TypeError("expected a list of strings")
    return items
