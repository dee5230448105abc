"""A web service that embeds a RaftNode: an inventory replicated on three processes.

Each process is one member: an aiohttp server for clients, and a RaftNode (gRPC on its own
port, SQLite in its data directory, the LAN preset) hosting a replicated ``Shop``. Run three,
one per terminal (or with ``&``):

    python examples/web_service.py --id n1 --http 127.0.0.1:8081 --raft 127.0.0.1:7201 \\
        --peer n2=127.0.0.1:7202 --peer n3=127.0.0.1:7203 --data data
    python examples/web_service.py --id n2 --http 127.0.0.1:8082 --raft 127.0.0.1:7202 \\
        --peer n1=127.0.0.1:7201 --peer n3=127.0.0.1:7203 --data data
    python examples/web_service.py --id n3 --http 127.0.0.1:8083 --raft 127.0.0.1:7203 \\
        --peer n1=127.0.0.1:7201 --peer n2=127.0.0.1:7202 --data data

and talk to any of them:

    curl -X POST 'http://127.0.0.1:8082/items/apple?n=3'   # {"item": "apple", "count": 3}
    curl http://127.0.0.1:8083/items/apple                 # a linearizable read
    curl http://127.0.0.1:8081/leader                      # who leads, and the leader's job
    curl http://127.0.0.1:8081/health                      # this member's view

The leader runs a background job (``node.while_leader``): every second it records a heartbeat
through a command, fenced with its term. SIGTERM or Ctrl-C stops a member gracefully: the web
server first, then the node, which hands leadership over to another member if it leads.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import pathlib
import signal
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

import phalanx_aio
from phalanx_aio import (
    Config,
    NotApplied,
    OutcomeUnknown,
    RaftNode,
    ReplicatedState,
    SQLiteStorage,
    command,
)
from phalanx_aio.node import LeaderWork

# ---------------------------------------------------------------------------- replicated state


class Shop(ReplicatedState):
    """The replicated state: stock per item, and the leader's last heartbeat."""

    def __init__(self) -> None:
        self.stock: dict[str, int] = {}
        self.heartbeat: dict[str, Any] = {"node": None, "term": 0, "beats": 0}

    @command
    def add(self, item: str, n: int) -> int:
        """Add ``n`` (possibly negative) to ``item``'s stock; return the new count."""
        count = self.stock.get(item, 0) + n
        if count < 0:
            raise ValueError(f"only {self.stock.get(item, 0)} {item} in stock")  # before any change
        self.stock[item] = count
        return count

    @command
    def beat(self, node: str, term: int) -> bool:
        """The leader's job checks in. Refused from a term older than the newest seen: a
        deposed leader may still be running its job for a moment (the term fences it)."""
        if term < self.heartbeat["term"]:
            return False
        beats = self.heartbeat["beats"] + 1 if term == self.heartbeat["term"] else 1
        self.heartbeat = {"node": node, "term": term, "beats": beats}
        return True


# ---------------------------------------------------------------------------- leader-only job


def heartbeat_job(node: RaftNode, shop: Shop) -> Callable[[int], Awaitable[None]]:
    """The coroutine function ``node.while_leader`` runs, with the term, while ``node`` leads."""

    async def job(term: int) -> None:
        while True:
            await shop.beat(node.id, term)  # cancelled at once if this node stops leading
            await asyncio.sleep(1.0)

    return job


# ---------------------------------------------------------------------------- HTTP routes


def make_app(node: RaftNode, shop: Shop, work: LeaderWork) -> web.Application:
    routes = web.RouteTableDef()

    async def outcome(call: Any) -> web.Response:
        """Await a replicated call and turn its outcome into an HTTP answer."""
        try:
            return web.json_response(await call)
        except ValueError as exc:  # the command refused: nothing changed, on any member
            return web.json_response({"error": str(exc)}, status=409)
        except NotApplied as exc:  # not applied and never will be (no leader, overloaded): retry
            return web.json_response({"error": repr(exc)}, status=503)
        except OutcomeUnknown as exc:  # it may or may not have happened: read before retrying
            return web.json_response({"error": repr(exc)}, status=504)

    @routes.post("/items/{name}")
    async def add_item(request: web.Request) -> web.Response:
        item, n = request.match_info["name"], int(request.query.get("n", "1"))

        async def add() -> dict[str, Any]:
            return {"item": item, "count": await shop.add(item, n)}

        return await outcome(add())

    @routes.get("/items/{name}")
    async def get_item(request: web.Request) -> web.Response:
        item = request.match_info["name"]

        async def get() -> dict[str, Any]:  # linearizable: sees every write acknowledged before
            return {"item": item, "count": await shop.read(lambda s: s.stock.get(item, 0))}

        return await outcome(get())

    @routes.get("/leader")
    async def leader(request: web.Request) -> web.Response:
        async def get() -> dict[str, Any]:
            return {"leader": node.leader_id, "heartbeat": await shop.read(lambda s: dict(s.heartbeat))}

        return await outcome(get())

    @routes.get("/health")
    async def health(request: web.Request) -> web.Response:
        st = node.status()
        return web.json_response(
            {
                "id": node.id,
                "role": st.role,
                "term": st.term,
                "leader": st.leader,
                "applied": st.applied,
                "healthy": st.healthy,
                "job_running": work.running,  # the leader-only job runs here right now
                "job_term": work.term,
            },
            status=200 if st.healthy else 503,
        )

    app = web.Application()
    app.add_routes(routes)
    return app


# ---------------------------------------------------------------------------- one member


async def serve(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    data = pathlib.Path(args.data)
    data.mkdir(parents=True, exist_ok=True)
    shop = Shop()
    node = RaftNode(
        args.id,
        address=args.raft,
        peers=dict(peer.split("=", 1) for peer in args.peer),
        state_machine=shop,
        storage=SQLiteStorage(data / f"{args.id}.db"),
        config=Config.lan(),
        default_timeout=5.0,  # how long a request waits for its outcome (and for a leader)
    )
    # Leaving the block stops the job, then closes the node (a leader hands over first).
    async with node, node.while_leader(heartbeat_job(node, shop)) as work:
        runner = web.AppRunner(make_app(node, shop, work))
        await runner.setup()
        host, port = args.http.rsplit(":", 1)
        await web.TCPSite(runner, host, int(port)).start()
        print(f"{args.id}: http://{args.http}, raft {args.raft}", flush=True)
        try:
            await stop.wait()
        finally:
            await runner.cleanup()  # stop taking requests, finish those in flight
    print(f"{args.id}: stopped", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--id", required=True, help="this member's id, e.g. n1")
    parser.add_argument("--http", required=True, help="host:port for the web server")
    parser.add_argument("--raft", required=True, help="host:port for the Raft transport (gRPC)")
    parser.add_argument("--peer", action="append", default=[], help="id=host:port, once per peer")
    parser.add_argument("--data", required=True, help="directory for the SQLite file")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format=f"{args.id} %(levelname)s %(name)s: %(message)s")
    phalanx_aio.run(serve(args))


if __name__ == "__main__":
    main()
