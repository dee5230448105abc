"""Replicated counters, containers and queues."""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Collection, ItemsView, Iterator, KeysView, Mapping, ValuesView
from typing import Any, Generic, TypeVar

from phalanx_aio.commands import Codec, ReplicatedState, command
from phalanx_aio.errors import LocalError, ProtocolError

__all__ = [
    "ReplicatedCounter",
    "ReplicatedDict",
    "ReplicatedList",
    "ReplicatedPriorityQueue",
    "ReplicatedQueue",
    "ReplicatedSet",
]

K = TypeVar("K")
V = TypeVar("V")
T = TypeVar("T")


def _expect(obj: ReplicatedState, state: Any, kind: type) -> Any:
    if type(state) is not kind:
        found = type(state).__name__
        raise ProtocolError(f"{obj.replicated_id}: a snapshot holds a {found}, not a {kind.__name__}")
    return state


class ReplicatedCounter(ReplicatedState):
    """An integer. Commands return the new value; :meth:`get` (or :attr:`value`) reads it
    locally."""

    def __init__(self, initial: int = 0, *, name: str | None = None, codec: Codec | None = None) -> None:
        super().__init__(name=name, codec=codec)
        self._value = int(initial)

    @command
    def set(self, value: int) -> int:
        """Set the value."""
        self._value = value
        return value

    @command
    def add(self, n: int) -> int:
        """Add ``n``."""
        self._value += n
        return self._value

    @command
    def sub(self, n: int) -> int:
        """Subtract ``n``."""
        self._value -= n
        return self._value

    @command
    def inc(self) -> int:
        """Add one."""
        self._value += 1
        return self._value

    @command
    def dec(self) -> int:
        """Subtract one."""
        self._value -= 1
        return self._value

    def get(self) -> int:
        """The value (local read)."""
        return self._value

    @property
    def value(self) -> int:
        """The value (local read)."""
        return self._value

    def snapshot_state(self) -> int:
        """The value."""
        return self._value

    def restore_state(self, state: Any) -> None:
        """Set the value from a snapshot."""
        self._value = _expect(self, state, int)


class ReplicatedDict(ReplicatedState, Generic[K, V]):
    """A dict. ``await d.set(key, value)``, ``await d.pop(key)``; ``d.get(key)``, ``d[key]``,
    ``key in d``, ``len(d)`` and iteration read locally."""

    def __init__(
        self, data: Mapping[K, V] | None = None, *, name: str | None = None, codec: Codec | None = None
    ) -> None:
        super().__init__(name=name, codec=codec)
        self._data: dict[K, V] = dict(data or {})

    @command
    def set(self, key: K, value: V) -> None:
        """``d[key] = value``."""
        self._data[key] = value

    @command
    def setdefault(self, key: K, default: V) -> V:
        """Set ``key`` to ``default`` unless present; return its value."""
        return self._data.setdefault(key, default)

    @command
    def update(self, other: Mapping[K, V]) -> None:
        """Set every key of ``other`` (a dict)."""
        self._data.update(other)

    @command
    def pop(self, key: K, default: V | None = None) -> V | None:
        """Remove ``key``; return its value, or ``default`` if absent."""
        return self._data.pop(key, default)

    @command
    def clear(self) -> None:
        """Remove every key."""
        self._data.clear()

    @command
    def reset(self, data: Mapping[K, V]) -> None:
        """Replace the whole content with ``data`` (a dict)."""
        self._data = dict(data)

    def get(self, key: K, default: V | None = None) -> V | None:
        """The value of ``key``, or ``default`` (local read)."""
        return self._data.get(key, default)

    def __getitem__(self, key: K) -> V:
        """The value of ``key``; ``KeyError`` if absent (local read)."""
        return self._data[key]

    def __contains__(self, key: object) -> bool:
        """Whether ``key`` is present (local read)."""
        return key in self._data

    def __len__(self) -> int:
        """The number of keys (local read)."""
        return len(self._data)

    def __iter__(self) -> Iterator[K]:
        """The keys (local read)."""
        return iter(self._data)

    def keys(self) -> KeysView[K]:
        """The keys (a live, read-only view of the local state)."""
        return self._data.keys()

    def values(self) -> ValuesView[V]:
        """The values (a live, read-only view of the local state)."""
        return self._data.values()

    def items(self) -> ItemsView[K, V]:
        """The items (a live, read-only view of the local state)."""
        return self._data.items()

    def copy(self) -> dict[K, V]:
        """A shallow copy of the local state."""
        return dict(self._data)

    def snapshot_state(self) -> dict[K, V]:
        """The dict."""
        return self._data

    def restore_state(self, state: Any) -> None:
        """Replace the dict."""
        self._data = _expect(self, state, dict)


class ReplicatedList(ReplicatedState, Generic[T]):
    """A list. Commands mirror ``list``'s mutating methods (and raise what they raise);
    indexing, ``len``, iteration, :meth:`index` and :meth:`count` read locally."""

    def __init__(
        self, items: Collection[T] = (), *, name: str | None = None, codec: Codec | None = None
    ) -> None:
        super().__init__(name=name, codec=codec)
        self._items: list[T] = list(items)

    @command
    def append(self, item: T) -> None:
        """Append ``item``."""
        self._items.append(item)

    @command
    def extend(self, items: Collection[T]) -> None:
        """Append every item of ``items`` (a list, tuple or set)."""
        self._items.extend(items)

    @command
    def insert(self, index: int, item: T) -> None:
        """Insert ``item`` before ``index``."""
        self._items.insert(index, item)

    @command
    def set(self, index: int, item: T) -> None:
        """``xs[index] = item``; ``IndexError`` if out of range."""
        self._items[index] = item

    @command
    def remove(self, item: T) -> None:
        """Remove the first occurrence of ``item``; ``ValueError`` if absent."""
        self._items.remove(item)

    @command
    def pop(self, index: int = -1) -> T:
        """Remove and return the item at ``index`` (the last by default); ``IndexError`` if
        the list is empty."""
        return self._items.pop(index)

    @command
    def sort(self, reverse: bool = False) -> None:
        """Sort in place (items must be comparable; ``TypeError`` otherwise)."""
        self._items.sort(reverse=reverse)

    @command
    def clear(self) -> None:
        """Remove every item."""
        self._items.clear()

    @command
    def reset(self, items: Collection[T]) -> None:
        """Replace the whole content."""
        self._items = list(items)

    def get(self, index: int) -> T:
        """The item at ``index`` (local read)."""
        return self._items[index]

    def __getitem__(self, index: int) -> T:
        """The item at ``index`` (local read)."""
        return self._items[index]

    def __len__(self) -> int:
        """The number of items (local read)."""
        return len(self._items)

    def __iter__(self) -> Iterator[T]:
        """The items (local read)."""
        return iter(self._items)

    def __contains__(self, item: object) -> bool:
        """Whether ``item`` is in the list (local read)."""
        return item in self._items

    def index(self, item: T) -> int:
        """The index of the first occurrence of ``item`` (local read)."""
        return self._items.index(item)

    def count(self, item: T) -> int:
        """The number of occurrences of ``item`` (local read)."""
        return self._items.count(item)

    def copy(self) -> list[T]:
        """A shallow copy of the local state."""
        return list(self._items)

    def snapshot_state(self) -> list[T]:
        """The list."""
        return self._items

    def restore_state(self, state: Any) -> None:
        """Replace the list."""
        self._items = _expect(self, state, list)


class ReplicatedSet(ReplicatedState, Generic[T]):
    """A set. :meth:`pop` removes the member added earliest, so that every member pops the
    same one (a ``set`` pops in hash order, which differs between processes)."""

    def __init__(
        self, items: Collection[T] = (), *, name: str | None = None, codec: Codec | None = None
    ) -> None:
        super().__init__(name=name, codec=codec)
        self._members: dict[T, None] = dict.fromkeys(items)

    @command
    def add(self, item: T) -> bool:
        """Add ``item``; True if it was not there."""
        if item in self._members:
            return False
        self._members[item] = None
        return True

    @command
    def remove(self, item: T) -> None:
        """Remove ``item``; ``KeyError`` if absent."""
        del self._members[item]

    @command
    def discard(self, item: T) -> bool:
        """Remove ``item`` if present; True if it was."""
        return self._members.pop(item, _ABSENT) is not _ABSENT

    @command
    def pop(self) -> T:
        """Remove and return the member added earliest; ``KeyError`` if empty."""
        if not self._members:
            raise KeyError("pop from an empty set")
        item = next(iter(self._members))
        del self._members[item]
        return item

    @command
    def update(self, items: Collection[T]) -> None:
        """Add every item of ``items`` (a list, tuple or set)."""
        self._members.update(dict.fromkeys(items))

    @command
    def clear(self) -> None:
        """Remove every member."""
        self._members.clear()

    @command
    def reset(self, items: Collection[T]) -> None:
        """Replace the whole content."""
        self._members = dict.fromkeys(items)

    def __contains__(self, item: object) -> bool:
        """Whether ``item`` is a member (local read)."""
        return item in self._members

    def __len__(self) -> int:
        """The number of members (local read)."""
        return len(self._members)

    def __iter__(self) -> Iterator[T]:
        """The members, earliest added first (local read)."""
        return iter(self._members)

    def copy(self) -> set[T]:
        """The members as a ``set`` (local read)."""
        return set(self._members)

    def snapshot_state(self) -> list[T]:
        """The members in the order they were added (the order :meth:`pop` follows)."""
        return list(self._members)

    def restore_state(self, state: Any) -> None:
        """Replace the members."""
        self._members = dict.fromkeys(_expect(self, state, list))


_ABSENT: Any = object()


class _Queue(ReplicatedState, Generic[T]):
    """What both queues share: the bound and the local reads (``_items[0]`` is the next item
    that ``get`` returns)."""

    _items: deque[T] | list[T]

    def __init__(self, maxsize: int = 0, *, name: str | None = None, codec: Codec | None = None) -> None:
        super().__init__(name=name, codec=codec)
        if maxsize < 0:
            raise LocalError(f"maxsize must be >= 0 (0: unbounded), not {maxsize}")
        self.maxsize = maxsize

    def peek(self) -> T | None:
        """The item :meth:`get` would return next, or None (local read)."""
        return self._items[0] if self._items else None

    def qsize(self) -> int:
        """The number of items (local read)."""
        return len(self._items)

    def __len__(self) -> int:
        """The number of items (local read)."""
        return len(self._items)

    def empty(self) -> bool:
        """Whether the queue is empty (local read)."""
        return not self._items

    def full(self) -> bool:
        """Whether ``put`` would refuse (local read)."""
        return bool(self.maxsize) and len(self._items) >= self.maxsize


class ReplicatedQueue(_Queue[T]):
    """A first-in first-out queue, bounded when ``maxsize`` > 0 (the same on every member).
    :meth:`put` returns False when full, :meth:`get` returns ``default`` when empty: neither
    waits. Local reads: ``peek()`` (the front item, or None), ``qsize()``, ``len(q)``,
    ``empty()`` and ``full()``."""

    _items: deque[T]

    def __init__(self, maxsize: int = 0, *, name: str | None = None, codec: Codec | None = None) -> None:
        super().__init__(maxsize, name=name, codec=codec)
        self._items = deque()

    @command
    def put(self, item: T) -> bool:
        """Add ``item`` at the back; False (and nothing added) if the queue is full."""
        if self.full():
            return False
        self._items.append(item)
        return True

    @command
    def get(self, default: T | None = None) -> T | None:
        """Remove and return the front item, or ``default`` if the queue is empty."""
        return self._items.popleft() if self._items else default

    def snapshot_state(self) -> list[T]:
        """The items, front first (``maxsize`` is configuration, not state)."""
        return list(self._items)

    def restore_state(self, state: Any) -> None:
        """Replace the items."""
        self._items = deque(_expect(self, state, list))


class ReplicatedPriorityQueue(_Queue[T]):
    """A priority queue: :meth:`get` returns the smallest item (items must be comparable,
    e.g. ``(priority, payload)`` tuples). Bounded like :class:`ReplicatedQueue`, with the same
    local reads (``peek()`` gives the smallest item)."""

    _items: list[T]

    def __init__(self, maxsize: int = 0, *, name: str | None = None, codec: Codec | None = None) -> None:
        super().__init__(maxsize, name=name, codec=codec)
        self._items = []

    @command
    def put(self, item: T) -> bool:
        """Add ``item``; False (and nothing added) if the queue is full."""
        if self.full():
            return False
        heapq.heappush(self._items, item)  # type: ignore[type-var]
        return True

    @command
    def get(self, default: T | None = None) -> T | None:
        """Remove and return the smallest item, or ``default`` if the queue is empty."""
        return heapq.heappop(self._items) if self._items else default  # type: ignore[type-var]

    def snapshot_state(self) -> list[T]:
        """The heap, exactly as laid out (so that every member pops ties alike)."""
        return self._items

    def restore_state(self, state: Any) -> None:
        """Replace the heap."""
        self._items = _expect(self, state, list)
