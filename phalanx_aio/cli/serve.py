"""``phalanx-aio serve``: run one member of a replicated KV cluster until SIGTERM or SIGINT.

Settings come from (lowest to highest precedence) a TOML file (``--config``), ``PHALANX_*``
environment variables, then command-line flags. Every long flag is a TOML key (its name without
the leading dashes; ``-`` and ``_`` are the same) and an environment variable (``PHALANX_`` and
the name in capitals, ``-`` as ``_``). The flags and their merging are in
:mod:`phalanx_aio.cli.serve_settings`; this module runs the node they describe.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from phalanx_aio._grpc import parse_address

if TYPE_CHECKING:
    from phalanx_aio.node import RaftNode as RaftNodeT
from phalanx_aio.cli.serve_settings import (
    DEFAULT_LISTEN,
    LIMITS,
    PRESETS,
    Limit,
    ServeSettings,
    _is_ip,
    _split_discover,
    add_serve_arguments,
    plaintext_warning,
    resolve_settings,
)
from phalanx_aio.errors import ConfigError, PhalanxError

__all__ = [
    "DEFAULT_LISTEN",
    "LIMITS",
    "JoinFailed",
    "Limit",
    "NodeFailed",
    "Resolver",
    "ServeSettings",
    "add_serve_arguments",
    "join_contacts",
    "plaintext_warning",
    "resolve_members",
    "resolve_settings",
    "serve",
]

log = logging.getLogger("phalanx_aio.cli")


class JoinFailed(PhalanxError):
    """No member could be reached (or found) to join the cluster through: an environment
    problem, not a bad argument (``serve`` exits with status 1)."""


class NodeFailed(PhalanxError):
    """The node's loop failed and the node stopped: ``serve`` exits with status 1 at once, so
    that a supervisor restarts it (a process that lives on with a stopped node serves
    nothing)."""


class MemberRemoved(PhalanxError):
    """A member said that a committed membership change removed this node: ``serve`` stops
    (exit status 2, like a configuration error: this node is not part of the cluster)."""


Resolver = Callable[[str, int], Awaitable[list[str]]]
"""Turns (name, port) into ``HOST:PORT`` addresses; :func:`resolve_members` by default."""


async def resolve_members(name: str, port: int) -> list[str]:
    """The ``HOST:PORT`` addresses of ``name``'s A and AAAA records (IPv6 in brackets), in the
    resolver's order, without duplicates. Raises :class:`JoinFailed` if it does not resolve."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(name, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise JoinFailed(f"--discover {name}: cannot resolve: {exc.strerror or exc}") from exc
    out: list[str] = []
    for family, _type, _proto, _canon, sockaddr in infos:
        host = str(sockaddr[0])
        addr = f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"
        if addr not in out:
            out.append(addr)
    return out


async def join_contacts(s: ServeSettings, resolver: Resolver | None = None) -> list[str]:
    """The members to ask when joining: ``--join``'s, or those ``--discover`` finds (minus
    this node's own address: the advertised one, and what it resolves to when it is a name,
    as a pod's stable DNS name is)."""
    if s.join is not None:
        return [s.join]
    assert s.discover is not None
    resolve = resolver or resolve_members
    name, port = _split_discover(s.discover)
    found = await resolve(name, int(port or s.address.rpartition(":")[2]))
    own = {s.address, s.listen}
    host, _, own_port = s.address.rpartition(":")
    if not _is_ip(host.strip("[]")):
        with contextlib.suppress(JoinFailed):  # our name does not resolve (yet): nothing to add
            own.update(await resolve(host, int(own_port)))
    contacts = [a for a in found if a not in own]
    if not contacts:
        raise JoinFailed(f"--discover {s.discover}: found no other member ({found or 'no records'})")
    return contacts


def _ssl_contexts(s: ServeSettings) -> tuple[ssl.SSLContext | None, ssl.SSLContext | None]:
    cert, key, ca = s.tls_cert, s.tls_key, s.tls_ca
    if not cert:
        return None, None
    from phalanx_aio.cli._tls import tls_context
    from phalanx_aio.transport.grpc import client_ssl_context, server_ssl_context

    files = {"ca": ("--tls-ca", ca), "cert": ("--tls-cert", cert), "key": ("--tls-key", key)}
    server = tls_context(lambda: server_ssl_context(cert, key, cafile=ca), **files)
    client = tls_context(lambda: client_ssl_context(ca or cert, certfile=cert, keyfile=key), **files)
    return server, client


async def serve(
    s: ServeSettings, *, ready: asyncio.Event | None = None, resolver: Resolver | None = None
) -> None:
    """Run the node until SIGTERM/SIGINT (or until ``ready`` owner cancels us). ``resolver``
    replaces DNS for ``--discover`` (tests)."""
    from phalanx_aio.kv.metered import MeteredKVService
    from phalanx_aio.kv.service import KVService
    from phalanx_aio.kv.state_machine import KVStateMachine, SessionLimits
    from phalanx_aio.node import NodeEvent, RaftNode, RemovedFromCluster
    from phalanx_aio.observability import (
        HealthService,
        NodeMetrics,
        ObservabilityServer,
        ReflectionService,
        bind_node,
    )
    from phalanx_aio.storage import SQLiteStorage
    from phalanx_aio.transport.grpc import GrpcTransport

    try:
        s.data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--data-dir {s.data_dir}: {exc.strerror or exc}") from exc
    server_ssl, client_ssl = _ssl_contexts(s)
    warning = plaintext_warning(s)
    if warning is not None:
        log.warning("%s", warning)
    lim = s.limit
    service_type = MeteredKVService if s.http else KVService
    health = HealthService()  # grpc.health.v1 on the node's port
    service = service_type(
        max_request_bytes=s.max_request_bytes,
        max_stream_buffer_bytes=int(lim("max_stream_buffer_bytes")),
        max_connection_buffer_bytes=int(lim("max_connection_buffer_bytes")),
        max_buffer_bytes=int(lim("max_buffer_bytes")),
        stall_timeout=lim("stall_timeout"),
        quota_bytes=int(lim("quota_bytes")),
    )
    transport = GrpcTransport(
        node_id=s.id,
        cluster_id=s.cluster_id,
        listen=s.listen,
        server_ssl=server_ssl,
        client_ssl=client_ssl,
        bind_node_ids=s.tls_bind_ids,
        extra_handlers=[service, health, ReflectionService()],  # grpcurl works without our protos
        max_connections=int(lim("max_connections")),
        max_connection_rate=lim("max_connection_rate"),
        handshake_timeout=lim("handshake_timeout"),
        max_concurrent_streams=int(lim("max_concurrent_streams")),
        keepalive_interval=lim("peer_keepalive") or None,
        keepalive_timeout=lim("peer_keepalive_timeout"),
    )
    session_limits = SessionLimits(
        max_sessions=int(lim("max_sessions")),
        max_session_bytes=int(lim("max_session_bytes")),
        session_ttl=int(lim("session_ttl")),
    )
    config = PRESETS[s.preset]()
    store_exists = (s.data_dir / f"{s.id}.db").exists()
    if not store_exists and not s.joining and not s.bootstrap:
        raise ConfigError(
            f"--data-dir {s.data_dir} holds no store for {s.id}. To found a new cluster, start each "
            "founder once with --bootstrap (and --peer for the others). If this node was a member and "
            "lost its data, do not bootstrap it again (it would forget its votes and what it "
            "acknowledged): start it with --join, which replaces it safely"
        )
    peers, already_member, rejoin = dict(s.peers), False, False
    contacts: list[str] = []
    if s.joining:
        try:
            contacts = await join_contacts(s, resolver)
            peers, already_member = await _members_via(s, contacts, client_ssl)
        except JoinFailed:
            if not store_exists:
                raise
            # A restart: the stored configuration rules; carry on without the contact.
            log.warning("%s: no member reachable to join through; restarting from the stored state", s.id)
            already_member = True
        # Listed as a member but without a store: it lost its data (or never ran). Its old
        # acknowledgements and votes are forgotten, so it must not count as that member again:
        # it is removed, then added back as a learner and promoted once caught up.
        rejoin = already_member and not store_exists
    elif store_exists and s.bootstrap:
        log.info("%s: the store exists; --bootstrap is ignored", s.id)
    founding_guard = False
    if s.bootstrap and not store_exists and not s.joining:
        founding_guard = not await _refuse_refounding(s, client_ssl)
    node = RaftNode(
        s.id,
        address=s.address,
        peers=peers,
        join=s.joining,
        state_machine=KVStateMachine(limits=session_limits),
        storage=SQLiteStorage(s.data_dir / f"{s.id}.db"),
        config=config,
        cluster_id=s.cluster_id,
        transport=transport,
        founding_guard=founding_guard,
    )
    service.attach(node)
    health.attach(node)
    bind_node(node)  # log records of this task and the tasks the node starts carry its id and term
    http: ObservabilityServer | None = None
    if s.http:
        assert isinstance(service, MeteredKVService)
        service.metrics = NodeMetrics(
            node, transport_stats=lambda: transport.stats, kv_stats=service.buffer_stats
        )
        host, _, port = s.http.rpartition(":")
        http = ObservabilityServer(node, service.metrics, host=host.strip("[]"), port=int(port))
    stop = asyncio.Event()
    removed: list[RemovedFromCluster] = []

    def on_event(event: NodeEvent) -> None:
        if isinstance(event, RemovedFromCluster):
            removed.append(event)
            stop.set()

    node.add_listener(on_event)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    failed: list[BaseException] = []

    def on_loop_done(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            failed.append(task.exception() or RuntimeError("unknown"))
            stop.set()

    try:
        async with node:
            # RaftNode has no public hook for its loop's end: watch the task it runs.
            loop_task: asyncio.Task[None] | None = getattr(node, "_loop_task", None)
            if loop_task is not None:
                loop_task.add_done_callback(on_loop_done)
            log.info(
                "%s serving on %s%s (cluster %s, preset %s)",
                s.id,
                s.listen,
                f", advertised as {s.advertise}" if s.advertise else "",
                s.cluster_id,
                s.preset,
            )
            if http is not None:
                try:
                    await http.start()
                except OSError as exc:
                    raise ConfigError(f"--http {s.http}: {exc.strerror or exc}") from exc
                log.info("%s observability endpoint on http://%s/", s.id, s.http)
            joiner = None
            if s.joining and (rejoin or not already_member):
                joiner = asyncio.create_task(_join(s, node, contacts, client_ssl, rejoin=rejoin))
                joiner.add_done_callback(_report_join_failure)
            if ready is not None:
                ready.set()
            await stop.wait()
            if joiner is not None:
                joiner.cancel()
            log.info("%s shutting down", s.id)
    finally:
        if http is not None:
            await http.aclose()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    if failed:
        raise NodeFailed(
            f"{s.id}: the node's loop failed ({type(failed[0]).__name__}: {failed[0]}); the node "
            "stopped and serve exits so that a supervisor restarts it"
        )
    if removed:
        ev = removed[0]
        raise MemberRemoved(
            f"{s.id} was removed from cluster {s.cluster_id!r} (the change at index {ev.index}, as "
            f"{ev.reported_by} reports): it stopped. To bring it back, add it again: start it "
            "with an empty --data-dir and --join"
        )


def _report_join_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("joining stopped on an unexpected error", exc_info=task.exception())


async def _refuse_refounding(s: ServeSettings, client_ssl: ssl.SSLContext | None) -> bool:
    """``--bootstrap`` with no store: refuse if a member that leads the cluster already knows
    this node acknowledged entries past the founding one (it was a member and lost its data;
    founded again it would forget its votes and what it acknowledged). Founders that start
    together, or a late founder that never acknowledged anything, pass: peers that do not
    answer within a few seconds are not waited for (the node then votes only for candidates
    still at the founding entry until it learns of a later commit). Returns whether a leader
    answered (and so vouched that this node acknowledged nothing)."""
    from phalanx_aio.kv.client import KVClient
    from phalanx_aio.kv.messages import StatusResponse

    async def ask(address: str) -> StatusResponse | None:
        host, port = parse_address(address)
        try:  # a peer not listening yet (founders starting one by one) is not waited for
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 1.0)
        except (OSError, TimeoutError):
            return None
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        async with KVClient([address], cluster_id=s.cluster_id, ssl=client_ssl, timeout=3.0) as kv:
            return await kv.status(endpoint=address)

    answers = await asyncio.gather(*(ask(a) for a in s.peers.values()), return_exceptions=True)
    vouched = False
    for st in answers:
        if not isinstance(st, StatusResponse) or st.role != "leader":
            continue
        vouched = True
        me = next((m for m in st.members if m.node_id == s.id), None)
        if me is not None and me.match_index > 1:
            contact = next((m.address for m in st.members if m.node_id == st.node_id), "")
            raise ConfigError(
                f"refusing --bootstrap: cluster {s.cluster_id!r} already exists and its leader "
                f"{st.node_id} (term {st.term}, commit {st.commit_index}) knows that {s.id} "
                f"acknowledged entries up to index {me.match_index}, but --data-dir {s.data_dir} "
                f"holds no store for {s.id}: it lost its data. Founding it again would make it "
                "forget its votes and what it acknowledged. Start it with an empty --data-dir and "
                f"--join {contact or 'HOST:PORT'} instead: its old membership is then removed and "
                "it is added back safely"
            )
    return vouched


async def _members_via(
    s: ServeSettings, contacts: list[str], client_ssl: ssl.SSLContext | None
) -> tuple[dict[str, str], bool]:
    """Ask the members at ``contacts`` for the configuration: (the other members, am I one)."""
    from phalanx_aio.errors import PhalanxError
    from phalanx_aio.kv.client import KVClient

    try:
        async with KVClient(contacts, cluster_id=s.cluster_id, ssl=client_ssl, timeout=15.0) as kv:
            members = await kv.members()
    except (PhalanxError, OSError) as exc:
        flag = f"--join {s.join}" if s.join else f"--discover {s.discover} ({', '.join(contacts)})"
        raise JoinFailed(f"{flag}: cannot learn the cluster's members: {exc}") from exc
    peers = {m.node_id: m.address for m in members if m.node_id != s.id}
    return peers, any(m.node_id == s.id for m in members)


async def _join(
    s: ServeSettings,
    node: RaftNodeT,
    contacts: list[str],
    client_ssl: ssl.SSLContext | None,
    *,
    rejoin: bool = False,
) -> None:
    """Be added as a learner through the log, catch up, then (by default) be promoted. With
    ``rejoin`` (listed as a member, but started without a store) first have this node's old
    membership removed, so that nothing it acknowledged or voted before counts for it again."""
    from phalanx_aio.errors import PhalanxError
    from phalanx_aio.kv.client import KVClient

    async with KVClient(contacts, cluster_id=s.cluster_id, ssl=client_ssl, timeout=15.0) as kv:
        while True:
            try:
                members = await kv.members()
                if rejoin and any(m.node_id == s.id for m in members):
                    log.warning(
                        "%s is listed as a member but has no store: removing its old membership, "
                        "then joining again as a learner",
                        s.id,
                    )
                    members = await kv.remove_member(s.id)
                rejoin = False
                if not any(m.node_id == s.id for m in members):
                    members = await kv.add_member(s.id, s.address)  # the committed configuration
                    log.info("%s added as a learner", s.id)
                if not s.auto_promote:
                    return
                me = next((m for m in members if m.node_id == s.id), None)
                if me is not None and not me.learner:
                    return
                leader = await kv.status()
                if node.status().applied >= leader.commit_index:
                    await kv.promote(s.id)
                    log.info("%s caught up and promoted to voter", s.id)
                    return
            except PhalanxError as exc:
                log.info("%s: joining: %s (retrying)", s.id, exc)
            except (OSError, TimeoutError) as exc:
                log.warning("%s: joining: %r (retrying)", s.id, exc)
            await asyncio.sleep(0.5)
