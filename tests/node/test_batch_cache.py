"""Each node owns the cache of its last encoded batch of entries (``_entry_batch.BatchCache``):
its transport and its store share it, so a leader encodes a batch once for every follower and
for its disk, a follower stores the blob it received instead of encoding the same entries again,
and no other node in the process can find that batch."""

from __future__ import annotations

from phalanx_aio._entry_batch import BatchCache, entry_parts
from phalanx_aio.core.types import Entry, EntryType, Message, MessageType
from phalanx_aio.storage._codec import batch_rows
from phalanx_aio.transport.codec import decode_frame, encode_frames
from tests.node.harness import Harness


def _batch() -> list[Entry]:
    return [Entry(2, i, EntryType.NORMAL, b"cmd%d" % i) for i in range(1, 6)]


async def test_a_node_hands_its_own_cache_to_its_transport_and_store() -> None:
    h = Harness(["n1", "n2"])
    try:
        a, b = await h.start("n1"), await h.start("n2")
        assert a._storage.batch_cache is a._batch_cache
        assert a._transport is not None and a._transport.batch_cache is a._batch_cache
        assert b._storage.batch_cache is b._batch_cache
        assert a._batch_cache is not b._batch_cache
    finally:
        await h.aclose()


def test_two_nodes_in_one_process_cannot_see_each_others_cached_batch() -> None:
    h = Harness(["n1", "n2"])
    a, b = h.make("n1"), h.make("n2")
    entries = _batch()
    app = Message(MessageType.APP, to="n2", frm="n1", term=2, index=0, log_term=0, entries=tuple(entries))
    encode_frames("c", "n1", [app, app], cache=a._batch_cache)  # the leader n1 sends to followers
    cached = a._batch_cache.last
    assert cached is not None and cached[0] == tuple(entries)
    # n1's store finds the batch n1 just sent (encoded once for the wire and the disk)...
    assert entry_parts(entries, 64, a._batch_cache, remember=False)[0] is cached[1]
    # ... but n2, handed the very same entry objects, encodes them itself.
    assert b._batch_cache.last is None
    parts, size = entry_parts(entries, 64, b._batch_cache, remember=False)
    assert parts is not cached[1] and parts == cached[1] and size == cached[2]
    assert b._batch_cache.last is None  # remember=False: a store does not replace the batch
    assert batch_rows(entries, 64, b._batch_cache) == batch_rows(entries, 64, a._batch_cache)


def test_a_follower_stores_the_blob_it_received() -> None:
    entries = [
        Entry(3, 7, EntryType.NORMAL, b""),
        Entry(3, 8, EntryType.CONF, b"conf"),
        *(Entry(4, i, EntryType.NORMAL, bytes([i]) * i) for i in range(9, 40)),
    ]
    app = Message(MessageType.APP, to="n2", frm="n1", term=4, index=6, log_term=3, entries=tuple(entries))
    wire = encode_frames("c", "n1", [app])[0]
    follower = BatchCache()
    frame = decode_frame(wire, cache=follower)
    got = frame.messages[0].entries
    assert follower.last is not None and follower.last[0] is got  # the decoded objects
    blob = follower.last[1][0]
    assert blob in wire  # a slice of the frame as received
    rows = batch_rows(got, 1024, follower)
    assert rows[0][2] is blob  # stored as received: not encoded again
    assert rows == batch_rows(entries, 1024)  # and what encoding the entries gives, checksum too
    # Only those very objects: equal entries decoded elsewhere are encoded afresh.
    assert batch_rows(decode_frame(wire).messages[0].entries, 1024, follower)[0][2] is not blob
    # A message without entries leaves the cache alone, and so does a proposal forwarded to a
    # leader (whose cache holds the batch it just sent to its followers).
    heartbeat = Message(MessageType.HEARTBEAT, to="n2", frm="n1", term=4)
    prop = Message(MessageType.PROP, to="n2", frm="n1", term=0, entries=tuple(entries))
    decode_frame(encode_frames("c", "n1", [heartbeat, prop])[0], cache=follower)
    assert follower.last[0] is got


def test_without_a_cache_nothing_is_kept() -> None:
    entries = _batch()
    first, _ = entry_parts(entries, 64)
    again, _ = entry_parts(entries, 64)
    assert first == again and first is not again
    cache = BatchCache()
    kept, _ = entry_parts(entries, 64, cache)
    assert entry_parts(list(entries), 64, cache)[0] is kept  # another list, the same objects
    assert entry_parts([*entries[:4], Entry(2, 5, EntryType.NORMAL, b"x")], 64, cache)[0] is not kept


def test_a_cache_never_keeps_a_mutable_payload() -> None:
    payload = bytearray(b"mutable")
    entries = [Entry(1, 1, EntryType.NORMAL, payload)]  # type: ignore[arg-type]
    cache = BatchCache()
    entry_parts(entries, 64, cache)
    assert cache.last is None  # a bytearray may change after it was encoded
