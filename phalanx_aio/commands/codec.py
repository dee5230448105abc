"""Codecs: how command arguments and replicated state become bytes.

A command proposed on one node is decoded and applied on every member, so whatever decodes it
runs on input that a peer sent. :class:`SafeCodec`, the default, builds nothing but plain values
(no code runs, no class is looked up by a name taken from the input except those registered);
:class:`PickleCodec` can represent almost anything but runs whatever a peer's bytes ask for, and
must be asked for explicitly.
"""

from __future__ import annotations

import abc
import dataclasses
import enum
import pickle
import struct
from collections.abc import Iterable
from typing import Any, Final

from phalanx_aio.errors import LocalError, ProtocolError, UnsupportedValue

__all__ = ["Codec", "PickleCodec", "SafeCodec"]

# One byte says what follows. Every length and count is an unsigned LEB128 varint.
_NONE: Final = 0x00
_FALSE: Final = 0x01
_TRUE: Final = 0x02
_INT: Final = 0x03  # varint byte count, then the value in two's complement, big-endian
_FLOAT: Final = 0x04  # IEEE 754 binary64, big-endian
_STR: Final = 0x05  # varint byte count, then UTF-8 (lone surrogates kept: "surrogatepass")
_BYTES: Final = 0x06
_LIST: Final = 0x07  # varint item count, then the items
_TUPLE: Final = 0x08
_DICT: Final = 0x09  # varint pair count, then key, value, ... in the dict's order
_SET: Final = 0x0A  # varint item count, then the items sorted by their encoding
_FROZENSET: Final = 0x0B
_RECORD: Final = 0x0C  # a registered dataclass: its name (a str), field count, (name, value) pairs
_ENUM: Final = 0x0D  # a registered enum: its name (a str), then its member's value

_float = struct.Struct(">d")

MAX_DEPTH: Final = 64
"""How deeply containers may nest in one value (deeper input is refused, never recursed into)."""


class Codec(abc.ABC):
    """Turns values into bytes and back, the same way on every member.

    ``encode`` runs on the node that calls a command (and takes snapshots); ``decode`` runs on
    every member, on bytes that may come from a peer. ``encode`` must raise
    :class:`~phalanx_aio.errors.UnsupportedValue` for a value it cannot represent exactly, and
    ``decode`` :class:`~phalanx_aio.errors.ProtocolError` for malformed input.
    """

    safe: bool = True
    """False for a codec whose ``decode`` may run code named by its input (pickle)."""

    @abc.abstractmethod
    def encode(self, value: Any) -> bytes:
        """The bytes of ``value``."""

    @abc.abstractmethod
    def decode(self, data: bytes) -> Any:
        """The value that :meth:`encode` turned into ``data``."""


def _varint(n: int, out: bytearray) -> None:
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)


class SafeCodec(Codec):
    """The default codec: a compact tagged binary format for plain Python values.

    It represents exactly these types (not their subclasses), nested up to :data:`MAX_DEPTH`
    levels: ``None``, ``bool``, ``int`` (any size), ``float`` (every binary64 value, ``-0.0``
    and NaN included), ``str``, ``bytes`` (``bytearray`` and ``memoryview`` are accepted and
    decode as ``bytes``), ``list``, ``tuple``, ``dict`` (keys of any of these hashable types),
    ``set`` and ``frozenset``; and the dataclasses and enums passed as ``types``, each under its
    class name (or the name given in a mapping), so that decoding looks up no other class.

    Encoding is deterministic: a dict keeps its order, a set is written in the order of its
    members' encodings, so equal values give equal bytes whatever the hash seed. Decoding runs
    no code but the registered dataclasses' ``__init__``.
    """

    def __init__(self, types: Iterable[type] | dict[str, type] = ()) -> None:
        named = types.items() if isinstance(types, dict) else ((t.__name__, t) for t in types)
        self._by_name: dict[str, type] = {}
        self._by_type: dict[type, str] = {}
        for name, cls in named:
            if not isinstance(cls, type) or not (dataclasses.is_dataclass(cls) or issubclass(cls, enum.Enum)):
                raise LocalError(f"SafeCodec registers dataclasses and enums, not {cls!r}")
            if dataclasses.is_dataclass(cls) and any(not f.init for f in dataclasses.fields(cls)):
                raise LocalError(f"{cls.__name__}: every field of a registered dataclass must be in __init__")
            if name in self._by_name or cls in self._by_type:
                raise LocalError(f"SafeCodec: {name!r} ({cls.__name__}) is registered twice")
            self._by_name[name] = cls
            self._by_type[cls] = name

    # ---------------------------------------------------------------- encoding

    def encode(self, value: Any) -> bytes:
        """The bytes of ``value``; :class:`~phalanx_aio.errors.UnsupportedValue` names the
        first part of it that the format cannot represent."""
        out = bytearray()
        self._encode(value, out, 0, "value")
        return bytes(out)

    def _encode(self, v: Any, out: bytearray, depth: int, where: str) -> None:
        t = type(v)
        if v is None:
            out.append(_NONE)
        elif t is bool:
            out.append(_TRUE if v else _FALSE)
        elif t is int:
            raw = v.to_bytes((v + (v < 0)).bit_length() // 8 + 1, "big", signed=True)
            out.append(_INT)
            _varint(len(raw), out)
            out += raw
        elif t is float:
            out.append(_FLOAT)
            out += _float.pack(v)
        elif t is str:
            raw = v.encode("utf-8", "surrogatepass")
            out.append(_STR)
            _varint(len(raw), out)
            out += raw
        elif t is bytes or t is bytearray or t is memoryview:
            raw = bytes(v)
            out.append(_BYTES)
            _varint(len(raw), out)
            out += raw
        elif depth >= MAX_DEPTH:
            raise UnsupportedValue(f"{where} nests containers more than {MAX_DEPTH} levels deep")
        elif t is list or t is tuple:
            out.append(_LIST if t is list else _TUPLE)
            _varint(len(v), out)
            for i, item in enumerate(v):
                self._encode(item, out, depth + 1, f"{where}[{i}]")
        elif t is dict:
            out.append(_DICT)
            _varint(len(v), out)
            for k, item in v.items():
                self._encode(k, out, depth + 1, f"a key of {where}")
                self._encode(item, out, depth + 1, f"{where}[{k!r}]")
        elif t is set or t is frozenset:
            members: list[bytes] = []
            for item in v:
                one = bytearray()
                self._encode(item, one, depth + 1, f"a member of {where}")
                members.append(bytes(one))
            members.sort()
            out.append(_SET if t is set else _FROZENSET)
            _varint(len(members), out)
            out += b"".join(members)
        elif t in self._by_type:
            name = self._by_type[t]
            if isinstance(v, enum.Enum):
                out.append(_ENUM)
                self._encode(name, out, depth + 1, where)
                self._encode(v.value, out, depth + 1, f"{where}.value")
            else:
                fields = dataclasses.fields(v)
                out.append(_RECORD)
                self._encode(name, out, depth + 1, where)
                _varint(len(fields), out)
                for f in fields:
                    self._encode(f.name, out, depth + 1, where)
                    self._encode(getattr(v, f.name), out, depth + 1, f"{where}.{f.name}")
        else:
            hint = (
                " (register the class: SafeCodec(types=[...]))"
                if dataclasses.is_dataclass(v) or isinstance(v, enum.Enum)
                else ""
            )
            raise UnsupportedValue(
                f"{where} is a {t.__qualname__}, which SafeCodec cannot represent{hint}; it takes None, "
                "bool, int, float, str, bytes, list, tuple, dict, set, frozenset and registered "
                "dataclasses and enums"
            )

    # ---------------------------------------------------------------- decoding

    def decode(self, data: bytes) -> Any:
        """The value encoded in ``data``; :class:`~phalanx_aio.errors.ProtocolError` if ``data``
        is not exactly one well-formed value."""
        value, pos = self.decode_head(data)
        if pos != len(data):
            raise ProtocolError(f"malformed SafeCodec data: {len(data) - pos} bytes after the value")
        return value

    @staticmethod
    def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
        n = shift = 0
        while True:
            b = buf[pos]
            pos += 1
            n |= (b & 0x7F) << shift
            if b < 0x80:
                return n, pos
            shift += 7
            if shift > 63:
                raise ProtocolError("malformed SafeCodec data: a length is too long")

    def _chunk(self, buf: memoryview, pos: int) -> tuple[memoryview, int]:
        n, pos = self._varint(buf, pos)
        end = pos + n
        if end > len(buf):
            raise ProtocolError("malformed SafeCodec data: a length runs past the end")
        return buf[pos:end], end

    def decode_head(self, data: bytes | memoryview) -> tuple[Any, int]:
        """Decode the one value at the start of ``data``; return it and where it ends (what
        follows is left alone). Raises :class:`~phalanx_aio.errors.ProtocolError` like
        :meth:`decode`."""
        try:
            return self._decode(memoryview(data), 0, 0)
        except ProtocolError:
            raise
        except (IndexError, ValueError, TypeError, struct.error) as exc:
            raise ProtocolError(f"malformed SafeCodec data: {exc}") from exc

    def _decode(self, buf: memoryview, pos: int, depth: int) -> tuple[Any, int]:
        tag = buf[pos]
        pos += 1
        if tag == _NONE:
            return None, pos
        if tag in (_FALSE, _TRUE):
            return tag == _TRUE, pos
        if tag == _INT:
            raw, pos = self._chunk(buf, pos)
            return int.from_bytes(raw, "big", signed=True), pos
        if tag == _FLOAT:
            if pos + 8 > len(buf):
                raise ProtocolError("malformed SafeCodec data: a float runs past the end")
            return _float.unpack_from(buf, pos)[0], pos + 8
        if tag == _STR:
            raw, pos = self._chunk(buf, pos)
            return str(raw, "utf-8", "surrogatepass"), pos
        if tag == _BYTES:
            raw, pos = self._chunk(buf, pos)
            return bytes(raw), pos
        if depth >= MAX_DEPTH:
            raise ProtocolError(f"malformed SafeCodec data: containers nest more than {MAX_DEPTH} levels")
        if tag in (_LIST, _TUPLE, _SET, _FROZENSET, _DICT):
            n, pos = self._varint(buf, pos)
            if n > len(buf) - pos:  # every item takes at least one byte
                raise ProtocolError("malformed SafeCodec data: a count runs past the end")
            items = []
            for _ in range(n * 2 if tag == _DICT else n):
                item, pos = self._decode(buf, pos, depth + 1)
                items.append(item)
            if tag == _LIST:
                return items, pos
            if tag == _TUPLE:
                return tuple(items), pos
            if tag == _DICT:
                return dict(zip(items[::2], items[1::2], strict=True)), pos
            return (set(items) if tag == _SET else frozenset(items)), pos
        if tag in (_RECORD, _ENUM):
            name, pos = self._decode(buf, pos, depth + 1)
            cls = self._by_name.get(name) if type(name) is str else None
            if cls is None:
                raise ProtocolError(f"SafeCodec data names a class not registered here: {name!r}")
            if tag == _ENUM:
                if not issubclass(cls, enum.Enum):
                    raise ProtocolError(f"SafeCodec data names {name!r} as an enum; it is not one here")
                value, pos = self._decode(buf, pos, depth + 1)
                return cls(value), pos
            if not dataclasses.is_dataclass(cls):
                raise ProtocolError(f"SafeCodec data names {name!r} as a dataclass; it is not one here")
            n, pos = self._varint(buf, pos)
            kwargs: dict[str, Any] = {}
            for _ in range(n):
                key, pos = self._decode(buf, pos, depth + 1)
                kwargs[key], pos = self._decode(buf, pos, depth + 1)
            return cls(**kwargs), pos
        raise ProtocolError(f"malformed SafeCodec data: unknown tag 0x{tag:02x}")


class PickleCodec(Codec):
    """Pickle: represents almost any Python object, and is UNSAFE on a network.

    Unpickling runs whatever code the bytes name, and every member decodes the commands that
    any member (or anyone who can reach the cluster's port) proposes. Use it only when every
    peer and the network between them are trusted, and say so: ``PickleCodec(trust_peers=True)``
    (without it, construction raises :class:`~phalanx_aio.errors.LocalError`). Pickle is also
    not guaranteed to give equal bytes for equal values, and ties the log to the classes' import
    paths.
    """

    safe = False

    def __init__(self, *, trust_peers: bool = False, protocol: int = 5) -> None:
        if not trust_peers:
            raise LocalError(
                "PickleCodec runs arbitrary code from the bytes that peers send; pass "
                "trust_peers=True only if every peer and the network are trusted (the default "
                "SafeCodec needs no such trust)"
            )
        self.protocol = protocol

    def encode(self, value: Any) -> bytes:
        """``pickle.dumps(value)``."""
        try:
            return pickle.dumps(value, protocol=self.protocol)
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            raise UnsupportedValue(f"cannot pickle {type(value).__qualname__}: {exc}") from exc

    def decode(self, data: bytes) -> Any:
        """``pickle.loads(data)``: runs the code that ``data`` names."""
        try:
            return pickle.loads(data)
        except Exception as exc:
            raise ProtocolError(f"malformed pickle data: {exc!r}") from exc
