"""The typed command layer: :class:`ReplicatedState` objects and their :func:`command` methods.

A command call is framed as ``0x01``, the object's id (a :class:`SafeCodec` string, whatever the
object's codec), then the object's codec's encoding of ``[name, positional, keywords]``. A
snapshot is ``0x01`` followed by a :class:`SafeCodec` list of ``[id, state bytes]`` pairs, one
per object, sorted by id: a node hosting one object and a node hosting a group of one write the
same bytes, so a deployment can grow from one object to several.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Coroutine, Iterable, Sequence
from typing import (
    TYPE_CHECKING,
    Any,
    ClassVar,
    Concatenate,
    Final,
    Generic,
    ParamSpec,
    Self,
    TypeVar,
    overload,
)

from phalanx_aio.commands.codec import Codec, SafeCodec
from phalanx_aio.errors import LocalError, ProtocolError, UnknownCommand, UnsupportedValue
from phalanx_aio.node._attach import register_state_types
from phalanx_aio.node.state_machine import StateMachine

if TYPE_CHECKING:
    from phalanx_aio.node.raft_node import RaftNode

__all__ = ["BoundCommand", "Command", "ReplicatedGroup", "ReplicatedState", "command"]

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")
SelfT = TypeVar("SelfT", bound="ReplicatedState")

_FRAME: Final = b"\x01"  # the version of the command and snapshot framing
_frame_codec: Final = SafeCodec()  # frames are always SafeCodec, whatever the objects' codecs
_POSITIONAL: Final = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.VAR_POSITIONAL)


class Command(Generic[SelfT, P, R]):
    """A method of a :class:`ReplicatedState` marked with :func:`command`.

    Read through an instance, it is a :class:`BoundCommand`: calling that replicates the call.
    Read through the class, it is this object; :attr:`func` is the undecorated method.
    """

    def __init__(
        self, func: Callable[Concatenate[SelfT, P], R], name: str | None, aliases: Sequence[str]
    ) -> None:
        if not callable(func) or inspect.iscoroutinefunction(func):
            raise LocalError(f"@command takes a plain (not async) method, not {func!r}")
        self.func = func
        """The method as written (it runs when the command is applied)."""
        self.name = name if name is not None else func.__name__
        """The command's stable name in the log (the method's name unless given)."""
        self.aliases = tuple(aliases)
        """Earlier names still accepted when applying (for renamed commands)."""
        for n in (self.name, *self.aliases):
            if not isinstance(n, str) or not n:
                raise LocalError(f"a command name must be a non-empty string, not {n!r}")
        self.signature = inspect.signature(func)
        functools.update_wrapper(self, func)  # type: ignore[arg-type]

    @overload
    def __get__(self, obj: None, owner: type[Any] | None = None) -> Command[SelfT, P, R]: ...

    @overload
    def __get__(self, obj: SelfT, owner: type[Any] | None = None) -> BoundCommand[P, R]: ...

    def __get__(
        self, obj: SelfT | None, owner: type[Any] | None = None
    ) -> Command[SelfT, P, R] | BoundCommand[P, R]:
        """The command bound to ``obj`` (or this command, read through the class)."""
        if obj is None:
            return self
        return BoundCommand(self, obj, None)

    def encode_call(self, obj: ReplicatedState, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
        """The command bytes that apply this command with these arguments on ``obj``'s
        replicas. Raises ``TypeError`` if the arguments do not fit the method and
        :class:`~phalanx_aio.errors.UnsupportedValue` if the codec cannot represent one."""
        bound = self.signature.bind(obj, *args, **kwargs)
        positional: list[Any] = []
        named: dict[str, Any] = {}
        params = self.signature.parameters
        for i, (pname, value) in enumerate(bound.arguments.items()):
            if i == 0:
                continue  # self
            kind = params[pname].kind
            if kind is inspect.Parameter.POSITIONAL_ONLY:
                positional.append(value)
            elif kind is inspect.Parameter.VAR_POSITIONAL:
                positional.extend(value)
            elif kind is inspect.Parameter.VAR_KEYWORD:
                named.update(value)
            else:  # by name, so that parameters may be reordered or added with defaults
                named[pname] = value
        return obj._rs_prefix() + obj._rs_codec().encode([self.name, positional, named])


class BoundCommand(Generic[P, R]):
    """A command of one object: calling it replicates the call and returns an awaitable of the
    method's result (as applied on this node). Arguments are checked and encoded at once, so a
    bad call raises before anything is proposed."""

    __slots__ = ("_cmd", "_obj", "_timeout")

    def __init__(self, cmd: Command[Any, P, R], obj: ReplicatedState, timeout: float | None) -> None:
        self._cmd = cmd
        self._obj = obj
        self._timeout = timeout

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Coroutine[Any, Any, R]:
        """Propose the call through the object's node; the awaitable gives the result, or
        raises what the method raised, or what :meth:`RaftNode.propose
        <phalanx_aio.RaftNode.propose>` raises."""
        node = self._obj._rs_require_node()
        data = self._cmd.encode_call(self._obj, args, kwargs)
        result: Coroutine[Any, Any, R] = node.propose(data, timeout=self._timeout)
        return result

    def with_timeout(self, timeout: float | None) -> BoundCommand[P, R]:
        """The same command with its own deadline (seconds) instead of the node's default."""
        return BoundCommand(self._cmd, self._obj, timeout)

    @property
    def name(self) -> str:
        """The command's stable name."""
        return self._cmd.name

    def __repr__(self) -> str:
        return f"<command {self._cmd.name!r} of {self._obj!r}>"


@overload
def command(func: Callable[Concatenate[SelfT, P], R], /) -> Command[SelfT, P, R]: ...


@overload
def command(
    *, name: str | None = None, aliases: Sequence[str] = ()
) -> Callable[[Callable[Concatenate[SelfT, P], R]], Command[SelfT, P, R]]: ...


def command(
    func: Callable[Concatenate[SelfT, P], R] | None = None,
    /,
    *,
    name: str | None = None,
    aliases: Sequence[str] = (),
) -> Command[SelfT, P, R] | Callable[[Callable[Concatenate[SelfT, P], R]], Command[SelfT, P, R]]:
    """Mark a method of a :class:`ReplicatedState` as a replicated command.

    Use it bare (``@command``) or with options (``@command(name="add", aliases=("plus",))``).
    ``name`` is the command's stable name in the log (default: the method's name), so a method
    can be renamed without breaking the log; ``aliases`` are earlier names still applied.

    Calling the method on an object attached to a node returns an awaitable of its result:
    ``total = await inv.add("apple", 3)``. The body runs when the command is applied, on every
    member, and must be deterministic.
    """
    if isinstance(aliases, str):
        raise LocalError("aliases takes a sequence of names, not one string")

    def wrap(f: Callable[Concatenate[SelfT, P], R]) -> Command[SelfT, P, R]:
        return Command(f, name, aliases)

    return wrap if func is None else wrap(func)


class ReplicatedState(StateMachine):
    """A state machine written as a plain class whose mutating methods are :func:`command`\\ s.

    Pass an instance as ``state_machine=`` to :class:`~phalanx_aio.RaftNode` (or several, in a
    list); then calling a command method replicates the call, and once it is committed the
    method runs on every member with the decoded arguments::

        class Inventory(ReplicatedState):
            def __init__(self) -> None:
                self.stock: dict[str, int] = {}

            @command
            def add(self, item: str, n: int) -> int:
                self.stock[item] = self.stock.get(item, 0) + n
                return self.stock[item]

    Reading attributes directly is a local read (possibly stale); :meth:`read` is linearizable.
    Arguments and state go through a :class:`~phalanx_aio.commands.Codec`, by default
    :class:`~phalanx_aio.commands.SafeCodec`. Snapshots hold the public attributes (names not
    starting with ``_``); override :meth:`snapshot_state` and :meth:`restore_state` to choose.

    Class keywords: ``name`` (the object's id, default the class name) and ``codec``
    (default :class:`~phalanx_aio.commands.SafeCodec()`); a subclass may also pass them to
    ``ReplicatedState.__init__`` per instance. Calling that ``__init__`` is optional.
    """

    _rs_commands: ClassVar[dict[str, Command[Any, ..., Any]]] = {}
    _rs_class_name: ClassVar[str | None] = None
    _rs_class_codec: ClassVar[Codec] = SafeCodec()
    # Per-instance settings and binding; class-level defaults so that calling __init__ is optional.
    _rs_id: str | None = None
    _rs_own_codec: Codec | None = None
    _rs_node: RaftNode | None = None
    _rs_frame: bytes | None = None

    def __init_subclass__(cls, *, name: str | None = None, codec: Codec | None = None, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if name is not None:
            _check_id(name)
            cls._rs_class_name = name
        if codec is not None:
            cls._rs_class_codec = _check_codec(codec)
        table: dict[str, Command[Any, ..., Any]] = {}
        seen: set[str] = set()
        for klass in cls.__mro__:
            for attr, value in vars(klass).items():
                if attr in seen:
                    continue  # overridden by a subclass
                seen.add(attr)
                if isinstance(value, Command):
                    for n in (value.name, *value.aliases):
                        if n in table and table[n] is not value:
                            raise LocalError(f"{cls.__name__}: two commands are named {n!r}")
                        table[n] = value
        cls._rs_commands = table

    def __init__(self, *, name: str | None = None, codec: Codec | None = None) -> None:
        if name is not None:
            _check_id(name)
            self._rs_id = name
        if codec is not None:
            self._rs_own_codec = _check_codec(codec)

    # ------------------------------------------------------------------ binding

    @property
    def replicated_id(self) -> str:
        """The id that routes this object's commands and snapshot part (the same on every
        member; distinct among the objects of one node)."""
        return self._rs_id or type(self)._rs_class_name or type(self).__name__

    @property
    def raft_node(self) -> RaftNode | None:
        """The node this object is attached to, or None."""
        return self._rs_node

    def _rs_attach(self, node: RaftNode) -> None:
        prev = self._rs_node
        if prev is not None and prev is not node and prev._core is not None and not prev._closed:
            raise LocalError(
                f"{self.replicated_id} is already attached to running node {prev.id}; an object is "
                "hosted by one node at a time"
            )
        if type(self).snapshot_state is ReplicatedState.snapshot_state:
            # Check the default snapshot now: a state it cannot encode would stop the node at
            # its first snapshot, thousands of commands later.
            self._rs_state_bytes()
        self._rs_node = node

    def _rs_require_node(self) -> RaftNode:
        node = self._rs_node
        if node is None:
            raise LocalError(
                f"{type(self).__name__} {self.replicated_id!r} is not attached to a RaftNode: pass it as "
                "RaftNode(..., state_machine=obj) (or in a list) before calling its commands"
            )
        return node

    def _rs_codec(self) -> Codec:
        return self._rs_own_codec or type(self)._rs_class_codec

    def _rs_prefix(self) -> bytes:
        frame = self._rs_frame
        if frame is None:
            frame = self._rs_frame = _FRAME + _frame_codec.encode(self.replicated_id)
        return frame

    async def read(self, fn: Callable[[Self], T], *, timeout: float | None = None) -> T:
        """Run ``fn(self)`` at a linearizable point (through :meth:`RaftNode.read
        <phalanx_aio.RaftNode.read>`) and return its result."""
        node = self._rs_require_node()
        return await node.read(lambda _sm: fn(self), timeout=timeout)

    # ------------------------------------------------------------------ state

    def snapshot_state(self) -> Any:
        """The state to snapshot, as a value the codec represents. By default a dict of the
        public attributes (names not starting with ``_``); override it (with
        :meth:`restore_state`) to leave some out, or to write a compact form of large state."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}

    def restore_state(self, state: Any) -> None:
        """Replace the state with ``state``, a value :meth:`snapshot_state` returned (possibly
        on another member). By default sets each attribute of the dict; attributes the
        snapshot does not name keep their value (see "Schema evolution" in the docs)."""
        if type(state) is not dict:
            kind = type(state).__name__
            raise ProtocolError(f"{self.replicated_id}: a snapshot's state must be a dict, not {kind}")
        for k, v in state.items():
            if type(k) is not str or k.startswith("_"):
                raise ProtocolError(f"{self.replicated_id}: a snapshot names an attribute {k!r}")
            setattr(self, k, v)

    # ------------------------------------------------------------------ StateMachine

    def apply(self, command: bytes) -> Any:
        """Apply one command (see :class:`~phalanx_aio.StateMachine`); a command for another
        object, or one this class does not define, raises
        :class:`~phalanx_aio.errors.UnknownCommand`."""
        ident, payload = _split_command(command)
        if ident != self.replicated_id:
            raise UnknownCommand(f"a command for object {ident!r} reached {self.replicated_id!r}")
        return self._rs_apply(payload)

    def _rs_apply(self, payload: bytes) -> Any:
        call = self._rs_codec().decode(payload)
        if (
            type(call) is not list
            or len(call) != 3
            or type(call[0]) is not str
            or type(call[1]) is not list
            or type(call[2]) is not dict
        ):
            raise ProtocolError(f"{self.replicated_id}: a malformed command")
        name, positional, named = call
        cmd = type(self)._rs_commands.get(name)
        if cmd is None:
            raise UnknownCommand(
                f"{type(self).__name__} {self.replicated_id!r} has no command {name!r} (a member running "
                "older code, or a command renamed without an alias)"
            )
        return cmd.func(self, *positional, **named)

    def snapshot(self) -> bytes:
        """The state as bytes: :meth:`snapshot_state` through the codec, framed with the id."""
        return _join_snapshot([(self.replicated_id, self._rs_state_bytes())])

    def restore(self, data: bytes) -> None:
        """Restore a snapshot taken by :meth:`snapshot` on a member hosting this object."""
        parts = _split_snapshot(data)
        if len(parts) != 1 or parts[0][0] != self.replicated_id:
            ids = [i for i, _ in parts]
            raise ProtocolError(f"a snapshot of objects {ids} cannot restore {self.replicated_id!r} alone")
        self.restore_state(self._rs_codec().decode(parts[0][1]))

    def _rs_state_bytes(self) -> bytes:
        try:
            return self._rs_codec().encode(self.snapshot_state())
        except UnsupportedValue as exc:
            raise UnsupportedValue(
                f"{self.replicated_id}: the state cannot be snapshotted ({exc}); keep what is not "
                "state in attributes named with a leading _, or override snapshot_state and restore_state"
            ) from exc


class ReplicatedGroup(StateMachine):
    """Several :class:`ReplicatedState` objects served by one node, commands routed by each
    object's :attr:`~ReplicatedState.replicated_id`. ``RaftNode(state_machine=[a, b])`` builds
    one; ``node.state_machine`` is then the group. Its snapshot holds every object's state."""

    def __init__(self, members: Iterable[ReplicatedState]) -> None:
        self._members: dict[str, ReplicatedState] = {}
        for m in members:
            if not isinstance(m, ReplicatedState):
                raise LocalError(
                    f"a sequence of state machines must hold ReplicatedState objects, not {type(m).__name__}"
                )
            ident = m.replicated_id
            if ident in self._members:
                raise LocalError(
                    f"two replicated objects have the id {ident!r}: give them distinct names "
                    "(e.g. ReplicatedDict(name='users'), or class X(ReplicatedState, name='x'))"
                )
            self._members[ident] = m
        if not self._members:
            raise LocalError("a group of replicated objects needs at least one")

    @property
    def members(self) -> tuple[ReplicatedState, ...]:
        """The objects, in the order given."""
        return tuple(self._members.values())

    def __getitem__(self, ident: str) -> ReplicatedState:
        """The object with this id."""
        return self._members[ident]

    def apply(self, command: bytes) -> Any:
        """Route the command to its object."""
        ident, payload = _split_command(command)
        obj = self._members.get(ident)
        if obj is None:
            raise UnknownCommand(f"no replicated object {ident!r} on this node")
        return obj._rs_apply(payload)

    def snapshot(self) -> bytes:
        """Every object's state, by id."""
        return _join_snapshot([(i, m._rs_state_bytes()) for i, m in self._members.items()])

    def restore(self, data: bytes) -> None:
        """Restore every object the snapshot holds (all decoded before any is changed); an
        object the snapshot does not hold (added since) keeps its state."""
        parts = _split_snapshot(data)
        unknown = [i for i, _ in parts if i not in self._members]
        if unknown:
            raise ProtocolError(f"the snapshot holds objects this node does not host: {unknown}")
        states = [(self._members[i], self._members[i]._rs_codec().decode(b)) for i, b in parts]
        for obj, state in states:
            obj.restore_state(state)

    def _rs_attach(self, node: RaftNode) -> None:
        for m in self._members.values():
            m._rs_attach(node)


def _check_id(name: Any) -> None:
    if not isinstance(name, str) or not name:
        raise LocalError(f"a replicated object's name must be a non-empty string, not {name!r}")


def _check_codec(codec: Any) -> Codec:
    if not isinstance(codec, Codec):
        raise LocalError(f"codec must be a phalanx_aio.commands.Codec, not {type(codec).__name__}")
    return codec


def _split_command(data: bytes) -> tuple[str, bytes]:
    if data[:1] != _FRAME:
        raise ProtocolError("not a replicated-object command (unknown framing)")
    view = memoryview(data)[1:]
    ident, end = _frame_codec.decode_head(view)
    if type(ident) is not str:
        raise ProtocolError("a malformed replicated-object command")
    return ident, bytes(view[end:])


def _join_snapshot(parts: list[tuple[str, bytes]]) -> bytes:
    return _FRAME + _frame_codec.encode(sorted([i, b] for i, b in parts))


def _split_snapshot(data: bytes) -> list[tuple[str, bytes]]:
    if data[:1] != _FRAME:
        raise ProtocolError("not a snapshot of replicated objects (unknown framing)")
    parts = _frame_codec.decode(data[1:])
    if type(parts) is not list or not all(
        type(p) is list and len(p) == 2 and type(p[0]) is str and type(p[1]) is bytes for p in parts
    ):
        raise ProtocolError("a malformed snapshot of replicated objects")
    return [(p[0], p[1]) for p in parts]


register_state_types(ReplicatedGroup, (ReplicatedState, ReplicatedGroup))
