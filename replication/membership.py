"""Joining a running kernel's Raft group from another machine.

A replica lost with its machine is replaced by a new Raft member elsewhere: the cluster starts the replacement with
the live replicas' addresses (``ReplicaConfig.joining``), and the replacement asks one of them, through the kernel's
peer API (``POST /members``, signed with the kernel's secret like the object requests), to swap it in. That live
replica removes the lost node and adds the new one through pysyncobj's membership change, then commits a
``MembershipChanged`` entry, so every replica maps replica indexes to the same nodes. The replacement, streamed the
log by the leader meanwhile, catches up and fetches the objects it needs from its peers.
"""
from __future__ import annotations

import asyncio
import http.client
import json
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any
from urllib.parse import urlsplit

import tornado.web

from .peer_store import auth_headers, refusal

log = logging.getLogger(__name__)

MEMBERS_PATH = "/members"
CHANGE_TIMEOUT_S = 30.0  # one membership change: two pysyncobj configuration entries and ours, committed
JOIN_DEADLINE_S = 300.0  # how long a replacement keeps asking (its peers may be busy electing a leader)
RETRY_S = 1.0

JoinHandler = Callable[[int, str, str], Future[None]]


class MembersHandler(tornado.web.RequestHandler):
    """``POST /members`` ``{"replica": N, "raft_address": "ip:port", "peer_url": "http://ip:port"}``: make that
    node replica N. Answers 200 once the change is committed, 409 with the reason when it failed."""

    def initialize(self, secret: str, on_join: JoinHandler) -> None:
        self._secret = secret
        self._on_join = on_join

    def prepare(self) -> None:
        refused = refusal(self._secret, self.request)
        if refused is not None:
            raise tornado.web.HTTPError(401, reason=refused)

    async def post(self) -> None:
        try:
            body = json.loads(self.request.body)
            replica, address, url = int(body["replica"]), str(body["raft_address"]), str(body["peer_url"])
        except (ValueError, KeyError, TypeError) as err:
            raise tornado.web.HTTPError(400, reason=f"a join names replica, raft_address and peer_url: {err}") from None
        try:
            await asyncio.wait_for(asyncio.wrap_future(self._on_join(replica, address, url)), CHANGE_TIMEOUT_S)
        except TimeoutError:
            raise tornado.web.HTTPError(409, reason=f"the membership change did not commit within "
                                                    f"{CHANGE_TIMEOUT_S:.0f} s") from None
        except Exception as err:  # the change failed: the joining replica asks again, here or elsewhere
            raise tornado.web.HTTPError(409, reason=str(err)) from None
        self.finish({"replica": replica, "raft_address": address})

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        self.finish({"error": self._reason})


def members_route(secret: str, on_join: JoinHandler) -> tuple[str, type, dict]:
    return (MEMBERS_PATH, MembersHandler, {"secret": secret, "on_join": on_join})


def request_join(peers: Sequence[str], replica: int, raft_address: str, peer_url: str, secret: str,
                 deadline_s: float = JOIN_DEADLINE_S) -> str:
    """Ask the live replicas, in turn, to swap this node in as ``replica``, until one has; returns its URL.
    Blocking (run it on a thread); RuntimeError with every refusal when the deadline passes."""
    body = json.dumps({"replica": replica, "raft_address": raft_address, "peer_url": peer_url}).encode()
    problems: dict[str, str] = {}
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        for peer in peers:
            problem = _ask(peer, body, secret)
            if problem is None:
                return peer
            problems[peer] = problem
        time.sleep(RETRY_S)
    raise RuntimeError(f"no live replica let this one join within {deadline_s:.0f} s: " +
                       "; ".join(f"{peer}: {why}" for peer, why in problems.items()))


def _ask(peer: str, body: bytes, secret: str) -> str | None:
    """None when ``peer`` made the change, else why not."""
    where = urlsplit(peer)
    connection = http.client.HTTPConnection(where.hostname, where.port, timeout=CHANGE_TIMEOUT_S + 5)
    try:
        connection.request("POST", MEMBERS_PATH, body, {"Content-Type": "application/json",
                                                         **auth_headers(secret, "POST", MEMBERS_PATH)})
        response = connection.getresponse()
        answer = response.read()
    except OSError as err:
        return f"did not answer ({err})"
    finally:
        connection.close()
    if response.status == 200:
        return None
    try:
        return f"{response.status}: {json.loads(answer)['error']}"
    except (ValueError, KeyError, TypeError):
        return f"{response.status}: {answer[:200]!r}"
