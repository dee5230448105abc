"""Fuzzing the client handlers of a live cluster: every unary KV method and the KV Stream call.

A three-node KV cluster runs on loopback (see ``tests/live_cluster.py``); hypothesis sends its
nodes random bytes, generated requests with absurd values (empty and oversized keys and
values, sequence numbers up to 2**64 - 1, foreign cluster ids, unknown node ids), mutated
valid requests and stream batches, through raw grpclib calls. Bad input must come back as a
response whose header carries a refusal code (the service's protocol: gRPC errors are for the
transport), or, for a message over the request limit or an unreadable stream batch, end the call
with a refusal status counted in ``KVService.rejections``. No answer may be ``INTERNAL`` (an
unexpected exception in a handler), no node's loop may fail, and a write still commits at the
end. Membership changes and leadership transfers of this cluster are not sent (they would be
obeyed: the KV service trusts any client of the right cluster); their refusals are.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from grpclib.const import Cardinality, Status
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from phalanx_aio import RaftNode
from phalanx_aio.errors import ProtocolError
from phalanx_aio.kv.codec import EncodeError, decode_kv_message, encode_kv_message
from phalanx_aio.kv.messages import (
    KV_METHODS,
    CompareAndSetRequest,
    DeleteRequest,
    ErrorCode,
    GetRequest,
    MemberAddRequest,
    MemberListRequest,
    MemberPromoteRequest,
    MemberRemoveRequest,
    PutRequest,
    ReadConsistency,
    RequestHeader,
    StatusRequest,
    TransferLeaderRequest,
)
from phalanx_aio.kv.stream_codec import (
    KV_STREAM_METHOD,
    decode_kv_stream_requests,
    decode_kv_stream_responses,
    encode_kv_stream_request,
)
from tests.helpers import find_leader
from tests.live_cluster import CLUSTER, DEADLINE, MAX_KEY, MAX_REQUEST, MAX_VALUE, REFUSALS, LiveCluster
from tests.transport.transport_strategies import mutated

IDS = ("n1", "n2", "n3")
U64 = (1 << 64) - 1
ADMIN = (MemberAddRequest, MemberRemoveRequest, MemberPromoteRequest, TransferLeaderRequest)
INPUTS: Counter[str] = Counter()
"""Inputs sent, by kind (printed at the end of the module, for docs/fuzzing.md)."""
CODES: Counter[str] = Counter()
"""The answers they got: an ErrorCode name, or the gRPC status that ended the call."""


def fuzz_settings(examples: int) -> settings:
    """Deterministic, bounded runs; no deadline (the machine is shared)."""
    return settings(
        derandomize=True,
        database=None,
        deadline=None,
        max_examples=examples,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )


FAST = fuzz_settings(60)
SLOW = fuzz_settings(1500)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveCluster]:
    """One live cluster for the whole module; it must still commit a write at the end."""
    c = LiveCluster(Path(tmp_path_factory.mktemp("fuzz-kv")), IDS)
    c.start()
    try:
        yield c
        assert c.broken() == []
        c.commit_a_write()
    finally:
        c.close()
        print(f"\nKV handler fuzzing: {sum(INPUTS.values())} inputs {dict(sorted(INPUTS.items()))}")
        print(f"answers: {dict(sorted(CODES.items()))}")


# ---------------------------------------------------------------------------------------------
# Strategies


def sized(limit: int) -> st.SearchStrategy[bytes]:
    """Empty, small, at the limit, or just over it (made cheaply, not drawn byte by byte)."""
    return st.one_of(
        st.just(b""),
        st.binary(min_size=1, max_size=16),
        st.sampled_from([limit, limit + 1, 3 * limit]).map(lambda n: b"k" * n),
    )


KEYS = sized(MAX_KEY)
VALUES = sized(MAX_VALUE)
COUNTS = st.one_of(st.integers(0, 5), st.sampled_from([U64, U64 - 1, 1 << 63, (1 << 63) - 1]))
CLUSTERS = st.integers(0, 4).flatmap(
    lambda r: st.sampled_from(["", "other", "x" * 300]) if r == 0 else st.just(CLUSTER)
)
NODE_IDS = st.one_of(st.just(""), st.sampled_from(["n4", "mallory", "é", "x" * 256]), st.text(max_size=8))


@st.composite
def headers(draw: st.DrawFn, cluster: st.SearchStrategy[str] = CLUSTERS) -> RequestHeader:
    """A request header with any session: none, plausible, or absurd numbers."""
    client = draw(
        st.one_of(st.just(""), st.sampled_from(["c1", "c2"]), st.text(max_size=4), st.just("c" * 300))
    )
    return RequestHeader(draw(cluster), client, draw(COUNTS), draw(COUNTS))


def requests(data_requests: bool = False) -> st.SearchStrategy[Any]:
    """Any KV request (only Put, Get, Delete and CompareAndSet with ``data_requests``).
    Membership changes and transfers name a foreign cluster or an invalid node id."""
    data = [
        st.builds(PutRequest, headers(), KEYS, VALUES),
        st.builds(GetRequest, headers(), KEYS, st.sampled_from(ReadConsistency)),
        st.builds(DeleteRequest, headers(), KEYS),
        st.builds(CompareAndSetRequest, headers(), KEYS, st.one_of(st.none(), VALUES), VALUES),
    ]
    if data_requests:
        return st.one_of(*data)
    foreign = headers(st.sampled_from(["", "other"]))
    bad_ids = st.sampled_from(["", "x" * 256])
    return st.one_of(
        *data,
        st.builds(StatusRequest, headers()),
        st.builds(MemberListRequest, headers()),
        st.builds(MemberAddRequest, foreign, NODE_IDS, st.text(max_size=20), st.booleans()),
        st.builds(MemberAddRequest, headers(), bad_ids, st.text(max_size=20), st.booleans()),
        st.builds(MemberRemoveRequest, foreign, NODE_IDS),
        st.builds(MemberRemoveRequest, headers(), bad_ids),
        st.builds(MemberPromoteRequest, foreign, NODE_IDS),
        st.builds(TransferLeaderRequest, foreign, NODE_IDS),
    )


# ---------------------------------------------------------------------------------------------
# Checks


def obeyed(request: Any) -> bool:
    """True for a request this test must not send: a valid membership change or transfer of
    the live cluster would be carried out."""
    if not isinstance(request, ADMIN) or request.header.cluster_id != CLUSTER:
        return False
    target = request.target if isinstance(request, TransferLeaderRequest) else request.node_id
    return (
        isinstance(request, TransferLeaderRequest) or 0 < len(target.encode("utf-8", "surrogatepass")) <= 255
    )


def unary_case(c: LiveCluster, kind: str, target: str, path: str, payload: bytes) -> None:
    """Send one unary call and check its answer against what the payload deserves."""
    request_type, response_type = KV_METHODS[path]
    try:
        request = decode_kv_message(request_type, payload, max_bytes=MAX_REQUEST)
    except ProtocolError:
        request = None
    if request is not None and obeyed(request):
        INPUTS["not sent (would be obeyed)"] += 1
        return
    service = c.services[target]
    before = dict(service.rejections)
    outcome = c.call(target, path, [payload], cardinality=Cardinality.UNARY_UNARY)
    INPUTS[kind] += 1
    raised = {k: v - before[k] for k, v in service.rejections.items() if v != before[k]}
    if len(payload) > MAX_REQUEST:
        CODES[str(outcome.status)] += 1
        assert outcome.status is Status.RESOURCE_EXHAUSTED, outcome
        assert raised == {"too_large": 1}
    else:
        assert outcome.status is None, outcome
        assert raised == ({"malformed": 1} if request is None else {})
        (reply,) = outcome.replies
        response = decode_kv_message(response_type, reply)
        code = response.header.error
        CODES[code.name] += 1
        assert code is not ErrorCode.INTERNAL, (request, response)
        if request is None:
            assert code is ErrorCode.INVALID_ARGUMENT, response
        elif request.header.cluster_id != CLUSTER:
            assert code is ErrorCode.WRONG_CLUSTER, response
    assert c.broken() == []


def stream_case(c: LiveCluster, kind: str, target: str, batches: list[bytes]) -> None:
    """Send batches on one Stream call; check the answers or the refusal against the oracle."""
    expected: list[tuple[int, Any]] = []
    refusal: tuple[Status, str] | None = None
    for batch in batches:
        if len(batch) > MAX_REQUEST:
            refusal = (Status.RESOURCE_EXHAUSTED, "too_large")
            break
        try:
            expected += [
                (rid, req) for rid, _, req in decode_kv_stream_requests(batch, max_bytes=MAX_REQUEST)
            ]
        except ProtocolError:
            refusal = (Status.INVALID_ARGUMENT, "malformed")
            break
    service = c.services[target]
    before = dict(service.rejections)
    outcome = c.call(target, KV_STREAM_METHOD, batches, cardinality=Cardinality.STREAM_STREAM)
    INPUTS[kind] += 1
    raised = {k: v - before[k] for k, v in service.rejections.items() if v != before[k]}
    answers = [item for reply in outcome.replies for item in decode_kv_stream_responses(reply)]
    for _, response in answers:
        CODES[response.header.error.name] += 1
        assert response.header.error is not ErrorCode.INTERNAL, response
    if refusal is None:
        assert outcome.status is None, outcome
        assert raised == {}
        assert sorted(rid for rid, _ in answers) == sorted(rid for rid, _ in expected)
        by_id = dict(answers)
        ids = Counter(rid for rid, _ in expected)
        for rid, request in expected:
            if ids[rid] == 1 and request.header.cluster_id != CLUSTER:  # ids may repeat
                assert by_id[rid].header.error is ErrorCode.WRONG_CLUSTER
    else:
        CODES[str(outcome.status)] += 1
        assert outcome.status is refusal[0], (outcome, refusal)
        assert outcome.status in REFUSALS
        assert raised == {refusal[1]: 1}
    assert c.broken() == []


def encoded(request: Any) -> bytes:
    try:
        return encode_kv_message(request)
    except EncodeError:
        return b""


def stream_batch(items: list[tuple[int, int, Any]]) -> bytes:
    out = []
    for rid, timeout_ms, request in items:
        try:
            out.append(encode_kv_stream_request(rid, timeout_ms, request))
        except EncodeError:
            continue
    return b"".join(out)


PATHS = st.sampled_from(sorted(KV_METHODS))
STREAM_ITEMS = st.lists(
    st.tuples(st.integers(0, U64), st.sampled_from([0, 1, 2000, 5000]), requests(data_requests=True)),
    max_size=4,
)

# ---------------------------------------------------------------------------------------------
# The tests


def random_unary(c: LiveCluster, target: str, path: str, payload: bytes) -> None:
    unary_case(c, "unary: random bytes", target, path, payload)


@FAST
@given(st.sampled_from(IDS), PATHS, st.binary(max_size=120))
def test_unary_random_bytes(cluster: LiveCluster, target: str, path: str, payload: bytes) -> None:
    random_unary(cluster, target, path, payload)


def generated_unary(c: LiveCluster, target: str, request: Any, data: st.DataObject) -> None:
    path = next(p for p, (req, _) in KV_METHODS.items() if req is type(request))
    payload = encoded(request)
    if data.draw(st.booleans()):
        payload = data.draw(mutated(payload))
        unary_case(c, "unary: mutated requests", target, path, payload)
    else:
        unary_case(c, "unary: generated requests", target, path, payload)


@FAST
@given(st.sampled_from(IDS), requests(), st.data())
def test_unary_generated_and_mutated(
    cluster: LiveCluster, target: str, request: Any, data: st.DataObject
) -> None:
    generated_unary(cluster, target, request, data)


@FAST
@given(st.sampled_from(IDS), PATHS, st.sampled_from([MAX_REQUEST + 1, 4 * MAX_REQUEST]))
def test_unary_oversized(cluster: LiveCluster, target: str, path: str, size: int) -> None:
    unary_case(cluster, "unary: oversized", target, path, b"\x0a" * size)


def stream_batches(c: LiveCluster, target: str, data: st.DataObject) -> None:
    batches = [stream_batch(data.draw(STREAM_ITEMS)) for _ in range(data.draw(st.integers(1, 3)))]
    how = data.draw(st.sampled_from(["generated", "mutated", "random", "oversized"]))
    if how == "mutated":
        i = data.draw(st.integers(0, len(batches) - 1))
        batches[i] = data.draw(mutated(batches[i]))
    elif how == "random":
        batches.append(data.draw(st.binary(max_size=120)))
    elif how == "oversized":
        batches.append(b"\x0a" * (MAX_REQUEST + 1))
    stream_case(c, f"stream: {how} batches", target, batches)


@FAST
@given(st.sampled_from(IDS), st.data())
def test_stream_batches(cluster: LiveCluster, target: str, data: st.DataObject) -> None:
    stream_batches(cluster, target, data)


def test_membership_requests_naming_unknown_or_wrong_nodes_are_refused(cluster: LiveCluster) -> None:
    """Sent to the leader for this very cluster: each is refused, and the members stay the same."""
    h = RequestHeader(CLUSTER)
    cases: list[Any] = [
        MemberRemoveRequest(h, "n9"),
        MemberPromoteRequest(h, "n9"),
        MemberPromoteRequest(h, "n2"),
        MemberAddRequest(h, "n2", "127.0.0.1:1", learner=False),
        MemberAddRequest(h, "n3", "127.0.0.1:1", learner=True),
        TransferLeaderRequest(h, "n9"),
    ]
    for request in cases:
        leader = cluster.run(find_leader(cluster.nodes.values, DEADLINE)).id
        path = next(p for p, (req, _) in KV_METHODS.items() if req is type(request))
        outcome = cluster.call(
            leader, path, [encode_kv_message(request)], cardinality=Cardinality.UNARY_UNARY
        )
        INPUTS["membership requests to the leader"] += 1
        (reply,) = outcome.replies
        code = decode_kv_message(KV_METHODS[path][1], reply).header.error
        CODES[code.name] += 1
        assert code in (ErrorCode.REJECTED, ErrorCode.NOT_LEADER), (request, code)
    assert cluster.broken() == []
    for node in cluster.nodes.values():
        conf = cluster.run(_conf(node))
        assert conf == (frozenset(IDS), frozenset())


async def _conf(node: RaftNode) -> tuple[frozenset[str], frozenset[str]]:
    """The voters and learners ``node`` knows of (read on the cluster's loop)."""
    core_conf = node.status().core.conf
    return frozenset(core_conf.voters), frozenset(core_conf.learners)


def test_the_cluster_commits_after_the_fuzzing(cluster: LiveCluster) -> None:
    """Runs after the tests above (file order): every node is alive, a write commits, and the
    answers covered the refusals."""
    assert cluster.broken() == []
    cluster.commit_a_write()
    wanted = {
        "INVALID_ARGUMENT",
        "WRONG_CLUSTER",
        "OK",
        "Status.RESOURCE_EXHAUSTED",
        "Status.INVALID_ARGUMENT",
    }
    assert wanted <= set(CODES), CODES


# ---------------------------------------------------------------------------------------------
# Long runs (pytest -m slow)


@pytest.mark.slow
@SLOW
@given(st.sampled_from(IDS), PATHS, st.binary(max_size=300))
def test_unary_random_bytes_long(cluster: LiveCluster, target: str, path: str, payload: bytes) -> None:
    random_unary(cluster, target, path, payload)


@pytest.mark.slow
@SLOW
@given(st.sampled_from(IDS), requests(), st.data())
def test_unary_generated_and_mutated_long(
    cluster: LiveCluster, target: str, request: Any, data: st.DataObject
) -> None:
    generated_unary(cluster, target, request, data)


@pytest.mark.slow
@SLOW
@given(st.sampled_from(IDS), st.data())
def test_stream_batches_long(cluster: LiveCluster, target: str, data: st.DataObject) -> None:
    stream_batches(cluster, target, data)


@pytest.mark.slow
def test_the_cluster_commits_after_the_long_fuzzing(cluster: LiveCluster) -> None:
    """After the long runs too, every node is alive and a write commits."""
    assert cluster.broken() == []
    cluster.commit_a_write()
