"""How a proposal's caller gets its outcome (private): alone (a future) or as one command of a
``propose_many`` batch (:class:`Batch`); a future already done (timed out, say) keeps its own."""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["Batch", "set_exc", "set_result", "settle"]


class Batch:
    """The outcomes of one ``propose_many`` call, whose commands have the consecutive request
    ids ``first``, ``first + 1``, ...; ``fut`` completes once every command has one."""

    __slots__ = ("errors", "first", "fut", "left", "results")

    def __init__(self, first: int, n: int, fut: asyncio.Future[None]) -> None:
        self.first = first
        self.results: list[Any] = [None] * n
        self.errors: dict[int, BaseException] = {}
        self.left = n
        self.fut = fut

    def settle(self, req: int, value: Any, exc: BaseException | None) -> None:
        """Record the outcome of request ``req`` (once: the caller took ``req`` out of the
        node's pending table first)."""
        i = req - self.first
        if exc is not None:
            self.errors[i] = exc
        else:
            self.results[i] = value
        self.left -= 1
        if self.left == 0 and not self.fut.done():
            self.fut.set_result(None)


def settle(w: asyncio.Future[Any] | Batch, req: int, value: Any, exc: BaseException | None) -> None:
    """Give request ``req`` its outcome, whether it waits alone or in a batch (once: a
    future already done, e.g. timed out, keeps its outcome)."""
    if isinstance(w, Batch):
        w.settle(req, value, exc)
    elif not w.done():
        if exc is None:
            w.set_result(value)
        else:
            w.set_exception(exc)


def set_result(fut: asyncio.Future[Any], value: Any) -> None:
    if not fut.done():
        fut.set_result(value)


def set_exc(fut: asyncio.Future[Any], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)
