"""Majority arithmetic: the commit index a quorum supports, vote and acknowledgement tallies.

Pure functions over plain mappings; property-tested against a brute-force oracle.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Mapping

__all__ = [
    "VoteResult",
    "joint_quorum_index",
    "joint_vote_result",
    "quorum_index",
    "quorum_size",
    "vote_result",
]


class VoteResult(enum.Enum):
    """Outcome of an election tally."""

    PENDING = 0
    WON = 1
    LOST = 2


def quorum_size(voters: Collection[str]) -> int:
    """Smallest number of voters that forms a majority."""
    return len(voters) // 2 + 1


def quorum_index(voters: Collection[str], acked: Mapping[str, int]) -> int:
    """The largest value that a majority of ``voters`` has reached in ``acked`` (missing = 0).

    Used for the commit index (match indexes) and for read rounds (acknowledged sequence
    numbers). With no voters there is no majority and the answer is 0.
    """
    if not voters:
        return 0
    values = sorted((acked.get(v, 0) for v in voters), reverse=True)
    return values[len(values) // 2]


def vote_result(voters: Collection[str], votes: Mapping[str, bool]) -> VoteResult:
    """WON once a majority granted, LOST once a majority can no longer grant."""
    granted = rejected = 0
    for v in voters:
        got = votes.get(v)
        if got is True:
            granted += 1
        elif got is False:
            rejected += 1
    q = quorum_size(voters)
    if granted >= q:
        return VoteResult.WON
    if len(voters) - rejected < q:
        return VoteResult.LOST
    return VoteResult.PENDING


def joint_quorum_index(voters: Collection[str], outgoing: Collection[str], acked: Mapping[str, int]) -> int:
    """:func:`quorum_index` of a possibly joint configuration: the largest value that a
    majority of ``voters`` and a majority of ``outgoing`` have both reached (thesis §4.3);
    just that of ``voters`` when ``outgoing`` is empty."""
    index = quorum_index(voters, acked)
    if outgoing:
        index = min(index, quorum_index(outgoing, acked))
    return index


def joint_vote_result(
    voters: Collection[str], outgoing: Collection[str], votes: Mapping[str, bool]
) -> VoteResult:
    """:func:`vote_result` of a possibly joint configuration: WON once both halves are won,
    LOST once either half is lost."""
    result = vote_result(voters, votes)
    if not outgoing or result is VoteResult.LOST:
        return result
    other = vote_result(outgoing, votes)
    if other is VoteResult.LOST:
        return other
    return VoteResult.WON if result is other is VoteResult.WON else VoteResult.PENDING
