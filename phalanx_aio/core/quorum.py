"""Majority arithmetic: the commit index a quorum supports, vote and acknowledgement tallies.

Pure functions over plain mappings; property-tested against a brute-force oracle.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Mapping

__all__ = ["VoteResult", "quorum_index", "quorum_size", "vote_result"]


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
