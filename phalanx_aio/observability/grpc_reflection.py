"""gRPC server reflection (``grpc.reflection.v1`` and ``v1alpha``) for a node's port.

Tools such as ``grpcurl`` and ``grpcui`` ask a server which services it has and how their
messages look, then call them without a compiled client. :class:`ReflectionService` answers
from the descriptors shipped in the package (``reflection.binpb``, written by
``scripts/gen_reflection.py`` from ``protos/``): the ``phalanx.v1.KV`` and
``phalanx.v1.RaftPeer`` services and the standard ``grpc.health.v1.Health``.

It answers ``list_services``, ``file_by_filename`` and ``file_containing_symbol`` (a service,
method, message, enum or field path); the protos declare no extensions, so
``all_extension_numbers_of_type`` answers an empty list for a known message and the extension
requests ``NOT_FOUND``. The messages are encoded by hand (a handful of fields), so the
protobuf runtime is not needed.
"""

from __future__ import annotations

import importlib.resources
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import grpclib.const
import grpclib.server
from grpclib.const import Cardinality, Status

from phalanx_aio._grpc import WireBytes
from phalanx_aio._protowire import LEN, VARINT, fields, tag, uvarint
from phalanx_aio.errors import LocalError, ProtocolError

__all__ = ["REFLECTION_SERVICES", "Descriptors", "ReflectionService", "load_descriptors"]

REFLECTION_SERVICES = ("grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection")
"""The reflection services themselves (both versions; grpcurl tries ``v1`` first)."""


def _fields(data: bytes) -> Iterator[tuple[int, int, Any]]:
    """``(field number, wire type, value)`` for each field of one protobuf message: an int for
    varints and fixed fields, bytes for length-delimited ones (the shared walker,
    :func:`phalanx_aio._protowire.fields`, with no bound on the count beyond the message's
    length: a descriptor may have many fields)."""
    for number, wire, a, b in fields(data, 0, len(data), "reflection message", len(data) + 1):
        if wire == LEN:
            yield number, wire, data[a:b]
        elif wire == VARINT:
            yield number, wire, a
        else:
            yield number, wire, int.from_bytes(data[a:b], "little")


def _len_field(number: int, payload: bytes) -> bytes:
    return tag(number, LEN) + uvarint(len(payload)) + payload


def _int_field(number: int, value: int) -> bytes:
    return tag(number, VARINT) + uvarint(value)


class Descriptors:
    """The serialized ``FileDescriptorProto`` of each file, and where each symbol is declared."""

    def __init__(self, files: Sequence[bytes]) -> None:
        self.files: dict[str, bytes] = {}
        """File name -> its serialized ``FileDescriptorProto``."""
        self.dependencies: dict[str, list[str]] = {}
        self.symbols: dict[str, str] = {}
        """Fully qualified symbol -> the name of the file that declares it."""
        self.services: list[str] = []
        """Fully qualified names of the services declared, in file order."""
        self.messages: set[str] = set()
        for raw in files:
            self._add_file(raw)

    def _add_file(self, raw: bytes) -> None:
        name, package, deps = "", "", []
        body: list[tuple[int, bytes]] = []
        for number, wire, value in _fields(raw):
            if wire != LEN:
                continue
            if number == 1:
                name = value.decode()
            elif number == 2:
                package = value.decode()
            elif number == 3:
                deps.append(value.decode())
            elif number in (4, 5, 6):
                body.append((number, value))
        self.files[name] = raw
        self.dependencies[name] = deps
        prefix = f"{package}." if package else ""
        for number, value in body:
            if number == 4:
                self._add_message(name, prefix, value)
            elif number == 5:
                self._add_named(name, prefix, value)
            else:
                service = self._add_named(name, prefix, value)
                self.services.append(service)
                for n, w, method in _fields(value):
                    if n == 2 and w == LEN:
                        self._add_named(name, service + ".", method)

    def _add_named(self, file: str, prefix: str, raw: bytes) -> str:
        """Record the symbol ``prefix + name`` (field 1 of ``raw``) and return it."""
        short = next((v.decode() for n, w, v in _fields(raw) if n == 1 and w == LEN), "")
        full = prefix + short
        self.symbols[full] = file
        return full

    def _add_message(self, file: str, prefix: str, raw: bytes) -> None:
        full = self._add_named(file, prefix, raw)
        self.messages.add(full)
        for number, wire, value in _fields(raw):
            if wire != LEN:
                continue
            if number in (2, 6):  # a field or an extension: grpcurl may ask for it
                self._add_named(file, full + ".", value)
            elif number == 3:  # a nested message
                self._add_message(file, full + ".", value)
            elif number == 4:  # a nested enum
                self._add_named(file, full + ".", value)

    def with_dependencies(self, name: str) -> list[bytes]:
        """The file ``name`` and every file it imports (directly or not), each once."""
        order: list[str] = []
        todo = [name]
        while todo:
            current = todo.pop()
            if current in order or current not in self.files:
                continue
            order.append(current)
            todo.extend(self.dependencies[current])
        return [self.files[n] for n in order]


def load_descriptors() -> Descriptors:
    """The descriptors shipped with the package (``reflection.binpb``)."""
    data = importlib.resources.files("phalanx_aio.observability").joinpath("reflection.binpb").read_bytes()
    return Descriptors([value for number, wire, value in _fields(data) if number == 1 and wire == LEN])


class ReflectionService:
    """``grpc.reflection.v1.ServerReflection`` (and ``v1alpha``) over the shipped descriptors.

    ``services`` are the names ``list_services`` answers (default: every service in the
    descriptors, and reflection itself); give the transport this object as an extra handler,
    as ``phalanx-aio serve`` does.
    """

    def __init__(
        self, services: Iterable[str] | None = None, *, descriptors: Descriptors | None = None
    ) -> None:
        self.descriptors = descriptors or load_descriptors()
        names = (
            list(services) if services is not None else [*self.descriptors.services, REFLECTION_SERVICES[0]]
        )
        if any(not n or any(c.isspace() for c in n) for n in names):
            raise LocalError(f"services must be fully qualified service names, not {names!r}")
        self.services = names

    def __mapping__(self) -> dict[str, grpclib.const.Handler]:
        """gRPC method path -> grpclib handler (both protocol versions)."""
        return {
            f"/{service}/ServerReflectionInfo": grpclib.const.Handler(
                self._info, Cardinality.STREAM_STREAM, WireBytes, WireBytes
            )
            for service in REFLECTION_SERVICES
        }

    def answer(self, request: bytes) -> bytes:
        """The ``ServerReflectionResponse`` to one ``ServerReflectionRequest`` (both encoded)."""
        host = b""
        kind, value = 0, b""
        for number, wire, item in _fields(request):
            if number == 1 and wire == LEN:
                host = item
            elif 3 <= number <= 7 and wire == LEN:
                kind, value = number, item
        out = _len_field(1, host) + _len_field(2, request)
        if kind == 7:  # list_services
            listed = b"".join(_len_field(1, _len_field(1, n.encode())) for n in self.services)
            return out + _len_field(6, listed)
        if kind in (3, 4):  # file_by_filename, file_containing_symbol
            text = value.decode(errors="replace")
            file = text if kind == 3 else self.descriptors.symbols.get(text)
            if file is not None and file in self.descriptors.files:
                files = self.descriptors.with_dependencies(file)
                return out + _len_field(4, b"".join(_len_field(1, f) for f in files))
            return out + self._error(Status.NOT_FOUND, f"not found: {text[:200]}")
        if kind == 6:  # all_extension_numbers_of_type: no extensions are declared
            text = value.decode(errors="replace")
            if text in self.descriptors.messages:
                return out + _len_field(5, _len_field(1, value))
            return out + self._error(Status.NOT_FOUND, f"not found: {text[:200]}")
        if kind == 5:  # file_containing_extension
            return out + self._error(Status.NOT_FOUND, "no extensions are declared")
        return out + self._error(Status.INVALID_ARGUMENT, "the request names no known message_request")

    @staticmethod
    def _error(status: Status, message: str) -> bytes:
        return _len_field(7, _int_field(1, status.value) + _len_field(2, message.encode()))

    async def _info(self, stream: grpclib.server.Stream[Any, Any]) -> None:
        async for request in stream:
            try:
                reply = self.answer(request.data)
            except ProtocolError:
                reply = self._error(Status.INVALID_ARGUMENT, "the request does not decode")
            await stream.send_message(WireBytes(reply))
