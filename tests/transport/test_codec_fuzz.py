"""Fuzzing: random and mutated input either decodes or raises ProtocolError, never anything else.

Whatever decodes must also re-encode to the same messages (the decoder accepts nothing the
encoder would refuse).
"""

from __future__ import annotations

import contextlib
import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from phalanx_aio.core.types import Entry, Message, MessageType, Snapshot, SnapshotMeta
from phalanx_aio.errors import ProtocolError
from phalanx_aio.transport import codec
from phalanx_aio.transport.chunks import SnapshotAssembler, snapshot_chunks
from phalanx_aio.transport.codec import Limits, decode_frame, encode_frame
from tests.transport.transport_strategies import frames

SETTINGS = settings(
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=200,
    suppress_health_check=[HealthCheck.too_slow],
)
SMALL = Limits(max_messages=8, max_entries=8, max_members=6, max_context_bytes=64, max_frame_bytes=4096)


def check_frame(data: bytes, limits: Limits = codec.DEFAULT_LIMITS) -> bool:
    """Decode ``data``; True if it decoded (and then re-encodes to the same frame)."""
    try:
        got = decode_frame(data, limits=limits)
    except ProtocolError:
        return False
    again = decode_frame(encode_frame(got.cluster_id, got.sender, got.messages, limits=limits), limits=limits)
    assert again == got
    return True


def mutate(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(6)
        pos = rng.randrange(len(buf) + 1)
        if op == 0 and buf:
            buf[min(pos, len(buf) - 1)] ^= 1 << rng.randrange(8)
        elif op == 1 and buf:
            buf[min(pos, len(buf) - 1)] = rng.choice((0, 1, 0x7F, 0x80, 0xFF, rng.randrange(256)))
        elif op == 2:
            buf[pos:pos] = rng.randbytes(rng.randint(1, 6))
        elif op == 3:
            del buf[pos : pos + rng.randint(1, 6)]
        elif op == 4:
            del buf[pos:]
        else:
            start = rng.randrange(len(buf) + 1)
            buf[pos:pos] = buf[start : start + rng.randint(1, 12)]
    return bytes(buf)


@SETTINGS
@given(st.binary(max_size=200))
def test_random_bytes(data: bytes) -> None:
    check_frame(data)
    check_frame(data, SMALL)


@SETTINGS
@given(frames(), st.integers(0, 2**32))
def test_mutated_valid_frames(frame: tuple[str, str, list[Message]], seed: int) -> None:
    cluster_id, sender, msgs = frame
    data = encode_frame(cluster_id, sender, msgs)
    rng = random.Random(seed)
    for _ in range(10):
        check_frame(mutate(rng, data))
        check_frame(mutate(rng, data), SMALL)


def test_seeded_mutation_sweep() -> None:
    """A fixed corpus of typical frames, each mutated many times with a seeded generator."""
    from phalanx_aio.core.types import ConfState, EntryType

    conf = ConfState(frozenset({"n1", "n2"}), frozenset({"n3"}), (("n1", b"a:1"), ("n3", b"c:3")))
    corpus = [
        encode_frame("c", "n1", [Message(MessageType.HEARTBEAT, "n2", "n1", 3, commit=9, seq=2)]),
        encode_frame(
            "c",
            "n1",
            [
                Message(
                    MessageType.APP,
                    "n2",
                    "n1",
                    3,
                    log_term=2,
                    index=7,
                    commit=7,
                    entries=(Entry(3, 8, EntryType.NORMAL, b"put k v"), Entry(3, 9, EntryType.CONF, b"{}")),
                ),
                Message(MessageType.READ_INDEX_RESP, "n2", "n1", 3, index=9, context=b"rid", reject=True),
            ],
        ),
        encode_frame(
            "c",
            "n1",
            [Message(MessageType.SNAP, "n3", "n1", 3, snapshot=Snapshot(SnapshotMeta(9, 3, conf), b"s"))],
        ),
    ]
    rng = random.Random(20240601)
    decoded = 0
    for _ in range(4000):
        decoded += check_frame(mutate(rng, rng.choice(corpus)))
    assert 0 < decoded < 4000  # the sweep exercised both outcomes


@SETTINGS
@given(st.binary(max_size=120))
def test_other_decoders_on_random_bytes(data: bytes) -> None:
    for decode in (codec.decode_entries, codec.decode_stream_ack, codec.decode_snapshot_ack):
        with contextlib.suppress(ProtocolError):
            decode(data)
    with contextlib.suppress(ProtocolError):
        SnapshotAssembler().feed(data)


def test_mutated_snapshot_chunks() -> None:
    m = Message(MessageType.SNAP, "n2", "n1", 1, snapshot=Snapshot(data=bytes(range(200))))
    chunks = list(snapshot_chunks("c", "n1", m, chunk_bytes=64))
    rng = random.Random(7)
    completed = 0
    for _ in range(600):
        asm = SnapshotAssembler()
        victim = rng.randrange(len(chunks))
        try:
            for i, chunk in enumerate(chunks):
                result = asm.feed(mutate(rng, chunk) if i == victim else chunk)
            completed += result is not None
        except ProtocolError:
            pass
    assert completed < 600


junk = st.one_of(st.none(), st.integers(-5, 2**70), st.text(max_size=3), st.binary(max_size=3), st.booleans())


@SETTINGS
@given(
    st.builds(
        Message,
        type=st.one_of(st.sampled_from(MessageType), junk),
        to=st.one_of(st.just("n2"), junk),
        frm=st.one_of(st.just("n1"), junk),
        term=st.one_of(st.integers(0, 9), junk),
        log_term=junk,
        index=junk,
        entries=st.one_of(st.just(()), st.tuples(junk), st.tuples(st.builds(Entry, junk, junk, junk, junk))),
        commit=junk,
        reject=junk,
        reject_hint=junk,
        snapshot=st.one_of(
            st.none(), junk, st.builds(Snapshot, st.one_of(junk, st.builds(SnapshotMeta, junk, junk)))
        ),
        context=junk,
        seq=junk,
        transfer=junk,
    )
)
def test_encoder_refuses_junk_with_encode_error(message: Message) -> None:
    """Whatever is put in a Message, encoding either works (and round-trips) or raises EncodeError."""
    try:
        data = encode_frame("c", "n1", [message])
    except codec.EncodeError:
        return
    (got,) = decode_frame(data).messages
    assert got.type == message.type and got.to == message.to
