"""Benchmark the peer wire codec against plain betterproto encodings of the same messages.

Three ways to put a frame of core messages on the wire, each measured end to end (core
dataclasses -> bytes -> core dataclasses):

* ``codec``: phalanx_aio.transport.codec (hand-written protobuf, entries packed in one blob);
* ``bp+blob``: the generated betterproto classes for the same schema (same bytes on the wire);
* ``bp naive``: betterproto with one protobuf message per entry (``repeated Entry``), the
  straightforward schema this design avoids.

Run ``python benchmarks/codec.py`` (``--quick`` for a short run). Prints a table and writes
``benchmarks/results/codec.json``. Timings are the best of several rounds.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata

import betterproto

from phalanx_aio._proto.phalanx import v1 as pb
from phalanx_aio.core.types import Entry, EntryType, Message, MessageType
from phalanx_aio.transport import codec

RESULTS = pathlib.Path(__file__).resolve().parent / "results"


# --- the naive schema: one protobuf message per entry ----------------------------------------


@dataclass(eq=False, repr=False)
class NaiveEntry(betterproto.Message):
    """``message Entry { uint64 term = 1; uint64 index = 2; uint32 type = 3; bytes data = 4; }``"""

    term: int = betterproto.uint64_field(1)
    index: int = betterproto.uint64_field(2)
    type: int = betterproto.uint32_field(3)
    data: bytes = betterproto.bytes_field(4)


@dataclass(eq=False, repr=False)
class NaiveMessage(betterproto.Message):
    """RaftMessage with ``repeated Entry entries = 13`` instead of the packed blob."""

    type: int = betterproto.uint32_field(1)
    to: str = betterproto.string_field(2)
    frm: str = betterproto.string_field(3)
    term: int = betterproto.uint64_field(4)
    log_term: int = betterproto.uint64_field(5)
    index: int = betterproto.uint64_field(6)
    commit: int = betterproto.uint64_field(7)
    reject: bool = betterproto.bool_field(8)
    reject_hint: int = betterproto.uint64_field(9)
    context: bytes = betterproto.bytes_field(10)
    seq: int = betterproto.uint64_field(11)
    transfer: bool = betterproto.bool_field(12)
    entries: list[NaiveEntry] = betterproto.message_field(13)  # noqa: RUF009 - betterproto field


@dataclass(eq=False, repr=False)
class NaiveFrame(betterproto.Message):
    """PeerFrame over NaiveMessage."""

    cluster_id: str = betterproto.string_field(1)
    sender: str = betterproto.string_field(2)
    messages: list[NaiveMessage] = betterproto.message_field(3)  # noqa: RUF009 - betterproto field


# --- the three round trips --------------------------------------------------------------------


def codec_round_trip(msgs: list[Message]) -> list[Message]:
    """Our codec."""
    return codec.decode_frame(codec.encode_frame("bench", "n1", msgs)).messages


def _scalars(m: Message) -> dict[str, object]:
    return {
        "to": m.to,
        "frm": "" if m.frm == "n1" else m.frm,
        "term": m.term,
        "log_term": m.log_term,
        "index": m.index,
        "commit": m.commit,
        "reject": m.reject,
        "reject_hint": m.reject_hint,
        "context": m.context,
        "seq": m.seq,
        "transfer": m.transfer,
    }


def _from_scalars(p: pb.RaftMessage | NaiveMessage, entries: tuple[Entry, ...]) -> Message:
    return Message(
        MessageType(int(p.type)),
        p.to,
        p.frm or "n1",
        p.term,
        p.log_term,
        p.index,
        entries,
        p.commit,
        p.reject,
        p.reject_hint,
        None,
        p.context,
        p.seq,
        p.transfer,
    )


def bp_blob_round_trip(msgs: list[Message]) -> list[Message]:
    """The generated classes, entries in the packed blob (same bytes as the codec)."""
    frame = pb.PeerFrame(
        cluster_id="bench",
        sender="n1",
        messages=[
            pb.RaftMessage(
                type=pb.MessageType(m.type.value), entries=codec.encode_entries(m.entries), **_scalars(m)
            )
            for m in msgs
        ],
    )
    parsed = pb.PeerFrame().parse(bytes(frame))
    return [_from_scalars(p, codec.decode_entries(p.entries)) for p in parsed.messages]


def bp_naive_round_trip(msgs: list[Message]) -> list[Message]:
    """betterproto with one protobuf message per entry."""
    frame = NaiveFrame(
        cluster_id="bench",
        sender="n1",
        messages=[
            NaiveMessage(
                type=m.type.value,
                entries=[NaiveEntry(e.term, e.index, e.type.value, e.data) for e in m.entries],
                **_scalars(m),
            )
            for m in msgs
        ],
    )
    parsed = NaiveFrame().parse(bytes(frame))
    return [
        _from_scalars(p, tuple(Entry(e.term, e.index, EntryType(e.type), e.data) for e in p.entries))
        for p in parsed.messages
    ]


VARIANTS: dict[str, Callable[[list[Message]], list[Message]]] = {
    "codec": codec_round_trip,
    "bp+blob": bp_blob_round_trip,
    "bp naive": bp_naive_round_trip,
}


# --- workloads --------------------------------------------------------------------------------


def small_messages(n: int) -> list[Message]:
    """A mix of the messages that dominate a quiet cluster: heartbeats, votes, append replies."""
    kinds = [
        Message(MessageType.HEARTBEAT, "n2", "n1", 12, commit=40_211, seq=981),
        Message(MessageType.HEARTBEAT_RESP, "n2", "n1", 12, seq=981),
        Message(MessageType.APP_RESP, "n2", "n1", 12, index=40_211),
        Message(MessageType.VOTE, "n2", "n1", 13, log_term=12, index=40_211),
    ]
    return [kinds[i % len(kinds)] for i in range(n)]


def append(entries: int, payload: int) -> list[Message]:
    """One APP message carrying ``entries`` entries of ``payload`` bytes each."""
    data = bytes(range(256)) * (payload // 256) + bytes(payload % 256)
    ents = tuple(Entry(12, 40_000 + i, EntryType.NORMAL, data) for i in range(entries))
    return [Message(MessageType.APP, "n2", "n1", 12, log_term=12, index=39_999, entries=ents, commit=39_990)]


def best_time(fn: Callable[[list[Message]], list[Message]], msgs: list[Message], budget: float) -> float:
    """Best seconds per call over a few rounds that together take about ``budget`` seconds."""
    assert fn(msgs) == msgs, f"{fn.__name__} does not round-trip"
    start = time.perf_counter()
    fn(msgs)
    once = max(time.perf_counter() - start, 1e-7)
    number = max(1, int(budget / 5 / once))
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(number):
            fn(msgs)
        best = min(best, (time.perf_counter() - start) / number)
    return best


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "absent"


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the table, write the JSON."""
    parser = argparse.ArgumentParser(description="wire codec benchmark")
    parser.add_argument("--quick", action="store_true", help="short run (less stable numbers)")
    parser.add_argument("--out", type=pathlib.Path, default=RESULTS / "codec.json")
    args = parser.parse_args(argv)
    budget = 0.05 if args.quick else 0.5

    rows: list[dict[str, object]] = []

    print("Encode + decode, end to end (core dataclasses -> bytes -> core dataclasses); best of 5.\n")
    print("Small messages (heartbeat, heartbeat reply, append reply, vote), 100 per frame:")
    print(f"  {'variant':<10} {'us/message':>11}  {'bytes/message':>13}")
    msgs = small_messages(100)
    size = len(codec.encode_frame("bench", "n1", msgs)) / len(msgs)
    base: dict[str, float] = {}
    for name, fn in VARIANTS.items():
        per_msg = best_time(fn, msgs, budget) / len(msgs) * 1e6
        base[name] = per_msg
        print(f"  {name:<10} {per_msg:>11.1f}  {size:>13.1f}")
        rows.append({"workload": "small messages", "variant": name, "us_per_message": round(per_msg, 2)})

    print("\nOne APP message with N entries (per-entry cost = (t(N) - t(0)) / N):")
    print(f"  {'variant':<10} {'N':>5} {'payload':>8} {'us/frame':>10} {'us/entry':>9} {'MB/s':>8}")
    for payload in (64, 1024):
        for name, fn in VARIANTS.items():
            empty = best_time(fn, append(0, payload), budget)
            for n in (1, 16, 256, 1024):
                if name == "bp naive" and n == 1024 and args.quick:
                    continue
                msgs = append(n, payload)
                total = best_time(fn, msgs, budget)
                per_entry = (total - empty) / n * 1e6
                mbps = n * payload / total / 1e6
                print(f"  {name:<10} {n:>5} {payload:>8} {total * 1e6:>10.1f} {per_entry:>9.2f} {mbps:>8.1f}")
                rows.append(
                    {
                        "workload": "append",
                        "variant": name,
                        "entries": n,
                        "payload_bytes": payload,
                        "us_per_frame": round(total * 1e6, 2),
                        "us_per_entry": round(per_entry, 3),
                        "payload_mb_per_s": round(mbps, 2),
                    }
                )

    result = {
        "benchmark": "codec",
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "machine": platform.machine(),
        "betterproto": _version("betterproto"),
        "betterproto_rust_codec": _version("betterproto-rust-codec"),
        "quick": args.quick,
        "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
