"""The packed layout of a batch of log entries (private).

One blob holds a whole batch: a fixed-size record per entry, then all the payloads. The
transport puts it in one protobuf ``bytes`` field per message (see ``docs/wire.md``) and the
SQLite store keeps one per row (see ``docs/storage.md``), so it is part of both formats: changing
it needs a new batch version, which both readers refuse until they learn it.

Layout, little-endian, no padding: ``u8 version (1) | u32 count | count x (u64 term,
u64 index, u8 type, u32 data length) | the data of each entry, in order``.

Encoding and decoding go column by column (``map`` over C functions): a batch of valid entries
costs no Python loop per entry. Anything unusual takes a per-entry path that names the culprit.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from itertools import accumulate
from operator import attrgetter, is_

from phalanx_aio._protowire import MAX_INT, EncodeError, bad, cannot
from phalanx_aio.core.types import Entry, EntryType

__all__ = ["MAX_INT", "BatchCache", "EncodeError", "decode_entries_at", "entry_parts"]

_ENTRY_BATCH_VERSION = 1
_BATCH_HEADER = struct.Struct("<BI")  # version, count
_ENTRY_RECORD = struct.Struct("<QQBI")  # term, index, type, data length
_ENTRY_TYPES: tuple[EntryType, ...] = tuple(sorted(EntryType))  # indexed by value
_ENTRY_TYPE_SET = frozenset(EntryType)
_INT_TYPE = frozenset((int,))
_BYTES_TYPES = frozenset((bytes, bytearray))
_EXACT_BYTES = frozenset((bytes,))
_term_of = attrgetter("term")
_index_of = attrgetter("index")
_type_of = attrgetter("type")
_data_of = attrgetter("data")


class BatchCache:
    """The last batch one node encoded, found again if the very same entries are encoded next.

    A leader sends the same entries to every follower in step, and its store then writes
    them: with one cache shared by the node's transport and store (``RaftNode`` creates it and
    hands it to both, as their ``batch_cache``), the batch is encoded once for the wire and
    the disk. Each node has its own, so nodes in one process never see each other's batches.
    """

    __slots__ = ("last",)

    def __init__(self) -> None:
        self.last: tuple[tuple[Entry, ...], list[bytes], int] | None = None
        """(the entries, the pieces of their blob, its length), or ``None``."""


def entry_parts(
    entries: Sequence[Entry], max_entries: int, cache: BatchCache | None = None, *, remember: bool = True
) -> tuple[list[bytes], int]:
    """The pieces of the blob of ``entries`` and their total length (joined once, by the caller).

    Raises :class:`EncodeError` if an entry cannot be encoded (naming it) or there are more
    than ``max_entries``. With a ``cache``, the batch it holds is reused if it matches, and
    a batch encoded here replaces it; ``remember=False`` still reuses it but does not replace
    it (the store encodes batches that the transport does not send).
    """
    count = len(entries)
    if count == 0:
        return [], 0
    if count > max_entries:
        cannot(f"{count} entries, over the limit of {max_entries}")
    # A leader sends the same entries to every follower in step: the last batch encoded is
    # kept, and found again if it holds the very same objects (entries are frozen and their
    # data immutable bytes, so the same objects encode the same).
    last = cache.last if cache is not None else None
    if last is not None and len(last[0]) == count and all(map(is_, entries, last[0])):
        return last[1], last[2]
    table: list[bytes] = [_BATCH_HEADER.pack(_ENTRY_BATCH_VERSION, count)]
    pack = _ENTRY_RECORD.pack
    size = _BATCH_HEADER.size + count * _ENTRY_RECORD.size
    # Column by column, checked in C (min/max, sets of types): the common case, a leader's
    # batch of valid entries, costs no Python loop per entry. Anything unusual goes through
    # the loop below, which checks each entry and names the first bad one.
    terms = list(map(_term_of, entries))
    indexes = list(map(_index_of, entries))
    etypes = list(map(_type_of, entries))
    datas = list(map(_data_of, entries))
    lens = list(map(len, datas)) if _BYTES_TYPES.issuperset(map(type, datas)) else None
    if (
        lens is not None
        and _INT_TYPE.issuperset(map(type, terms))
        and _INT_TYPE.issuperset(map(type, indexes))
        and _ENTRY_TYPE_SET.issuperset(etypes)
        and min(terms) >= 0
        and min(indexes) >= 0
        and max(terms) <= MAX_INT
        and max(indexes) <= MAX_INT
        and max(lens) <= 0xFFFFFFFF
    ):
        table.extend(map(pack, terms, indexes, etypes, lens))
        table.extend(datas)
        size += sum(lens)
        if remember and cache is not None and _EXACT_BYTES.issuperset(map(type, datas)):
            # a copy of the entries (the caller's list may change later); never a bytearray
            cache.last = (tuple(entries), table, size)
        return table, size
    datas = []
    for i, entry in enumerate(entries):
        term, index, etype, data = entry.term, entry.index, entry.type, entry.data
        if (
            type(term) is not int
            or type(index) is not int
            or not 0 <= term <= MAX_INT
            or not 0 <= index <= MAX_INT
            or etype not in _ENTRY_TYPE_SET
            or not isinstance(data, bytes | bytearray)
            or len(data) > 0xFFFFFFFF
        ):
            cannot(f"entry {i} cannot be encoded: {entry!r:.200}")
        table.append(pack(term, index, etype, len(data)))
        datas.append(data)
        size += len(data)
    table.extend(datas)
    return table, size


def decode_entries_at(
    data: bytes, pos: int, end: int, max_entries: int, terms_seen: dict[int, int] | None = None
) -> tuple[Entry, ...]:
    """The entries of the blob in ``data[pos:end]``; raises ``ProtocolError`` if it is
    malformed (naming the first bad entry) or holds more than ``max_entries``.

    With ``terms_seen``, entries of one term share one ``int`` object for it (a decoder hands
    out a new one per entry, 32 bytes each once terms pass 256): for logs held for long.
    """
    if pos == end:
        return ()
    if end - pos < _BATCH_HEADER.size:
        bad("entries: truncated batch header")
    version, count = _BATCH_HEADER.unpack_from(data, pos)
    if version != _ENTRY_BATCH_VERSION:
        bad(f"entries: unsupported batch version {version}")
    if count > max_entries:
        bad(f"entries: {count} entries, over the limit of {max_entries}")
    table = pos + _BATCH_HEADER.size
    offset = table + count * _ENTRY_RECORD.size
    if offset > end:
        bad(f"entries: batch of {count} entries is truncated")
    if count:
        # Column by column in C (a follower decodes every command the leader sends); a
        # batch that fails a check is decoded again below, entry by entry, to name the culprit.
        records = _ENTRY_RECORD.iter_unpack(memoryview(data)[table:offset])
        terms, indexes, etypes, lens = zip(*records, strict=True)
        if (
            max(terms) <= MAX_INT
            and max(indexes) <= MAX_INT
            and max(etypes) < len(_ENTRY_TYPES)
            and offset + sum(lens) == end
        ):
            bounds = list(accumulate(lens, initial=offset))
            datas = map(data.__getitem__, map(slice, bounds, bounds[1:]))
            if terms_seen is not None:
                terms = tuple(map(terms_seen.setdefault, terms, terms))
            return tuple(map(Entry, terms, indexes, map(_ENTRY_TYPES.__getitem__, etypes), datas))
    out: list[Entry] = []
    append = out.append
    types = _ENTRY_TYPES
    ntypes = len(types)
    for i, (term, index, etype, length) in enumerate(
        _ENTRY_RECORD.iter_unpack(memoryview(data)[table:offset])
    ):
        if term > MAX_INT or index > MAX_INT:
            bad(f"entries: entry {i} has term or index above 2**63")
        if etype >= ntypes:
            bad(f"entries: entry {i} has unknown type {etype} (index {index})")
        stop = offset + length
        if stop > end:
            bad(f"entries: entry {i} data runs past the end of the batch")
        append(Entry(term, index, types[etype], data[offset:stop]))
        offset = stop
    if offset != end:
        bad(f"entries: {end - offset} stray bytes after the last entry")
    return tuple(out)
