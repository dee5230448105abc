"""Shared pieces of the core's scenario tests: message-type shorthands, the LAN configuration
they use, and small cluster builders (see :mod:`tests.core.harness` for the network)."""

from __future__ import annotations

from phalanx_aio.core import (
    ConfChangeType,
    Config,
    MessageType,
)
from tests.core.harness import Network, fmt

APP = MessageType.APP
APP_RESP = MessageType.APP_RESP
HEARTBEAT = MessageType.HEARTBEAT
HEARTBEAT_RESP = MessageType.HEARTBEAT_RESP
SNAP = MessageType.SNAP
VOTE = MessageType.VOTE
PRE_VOTE = MessageType.PRE_VOTE
TIMEOUT_NOW = MessageType.TIMEOUT_NOW

# Pre-vote and check quorum on; commit broadcast at once, as in etcd (the golden traces show it;
# test_lazy_commit covers the presets' lazy mode).
LAN = Config.lan(eager_commit=True)
ET = LAN.election_ticks

ADD_LEARNER = ConfChangeType.ADD_LEARNER
ADD_VOTER = ConfChangeType.ADD_VOTER
REMOVE = ConfChangeType.REMOVE


def cluster(n: int = 3, config: Config = LAN, leader: str = "1", seed: int = 0) -> Network:
    """A bootstrapped ``n``-node network where ``leader`` won term 2 and committed its no-op."""
    net = Network.bootstrap(n, config, seed)
    net.campaign(leader)
    assert net.leaders() == [leader]
    net.take_trace()
    return net


def quiet(net: Network, nid: str) -> list[str]:
    """Handle ``nid``'s pending Ready and return its messages (formatted), without sending."""
    return [fmt(m) for m in net.collect(nid)]


LEASE = LAN.replace(read_mode="lease")
