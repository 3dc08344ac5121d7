"""Joining a running kernel's Raft group from another machine.

A replica lost with its machine is replaced by a new Raft member elsewhere: the cluster starts the replacement with
the live replicas' addresses (``ReplicaConfig.joining``), and the replacement asks one of them, through the kernel's
peer API (``POST /members``, signed with the kernel's secret like the object requests), to swap it in. That live
replica removes the lost node and adds the new one through pysyncobj's membership change, then commits a
``MembershipChanged`` entry, so every replica maps replica indexes to the same nodes. The replacement, streamed the
log by the leader meanwhile, catches up and fetches the objects it needs from its peers.

Both the request and the answer are sealed with the kernel's body key (``sealing``, bound to the request's method,
path and signed timestamp), so the addresses they name stay between the replicas, and a joining replica believes
only an answer that opens: one from a replica of this kernel, to this very request. Refusals of the signature (401)
travel in clear, since their reader may not hold the key.
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

from .peer_store import TIME_HEADER, auth_headers, refusal, sealing_context
from .sealing import SEALED_CONTENT_TYPE, SealedBodyError, Sealer, answer_context, request_context

log = logging.getLogger(__name__)

MEMBERS_PATH = "/members"
CHANGE_TIMEOUT_S = 30.0  # one membership change: two pysyncobj configuration entries and ours, committed
JOIN_DEADLINE_S = 300.0  # how long a replacement keeps asking (its peers may be busy electing a leader)
RETRY_S = 1.0

JoinHandler = Callable[[int, str, str], Future[None]]


class MembersHandler(tornado.web.RequestHandler):
    """``POST /members`` ``{"replica": N, "raft_address": "ip:port", "peer_url": "http://ip:port"}``, sealed: make
    that node replica N. Answers 200 once the change is committed, 409 with the reason when it failed (sealed)."""

    def initialize(self, secret: str, sealer: Sealer, on_join: JoinHandler) -> None:
        self._secret = secret
        self._sealer = sealer
        self._on_join = on_join

    def prepare(self) -> None:
        refused = refusal(self._secret, self.request)
        if refused is not None:
            raise tornado.web.HTTPError(401, reason=refused)

    async def post(self) -> None:
        try:
            opened = self._sealer.open_bytes(self.request.body, sealing_context(request_context, self.request))
            body = json.loads(opened)
            replica, address, url = int(body["replica"]), str(body["raft_address"]), str(body["peer_url"])
        except SealedBodyError as err:
            self._answer(400, {"error": f"the join request does not open: {err}"})
            return
        except (ValueError, KeyError, TypeError) as err:
            self._answer(400, {"error": f"a join names replica, raft_address and peer_url: {err}"})
            return
        log.info("replica %d asks to join as %s", replica, address)
        try:
            await asyncio.wait_for(asyncio.wrap_future(self._on_join(replica, address, url)), CHANGE_TIMEOUT_S)
        except TimeoutError:
            self._refuse(f"the membership change did not commit within {CHANGE_TIMEOUT_S:.0f} s")
            return
        except Exception as err:  # the change failed: the joining replica asks again, here or elsewhere
            self._refuse(str(err))
            return
        log.info("%s is replica %d now", address, replica)
        self._answer(200, {"replica": replica, "raft_address": address})

    def _refuse(self, why: str) -> None:
        log.warning("a join was refused: %s", why)
        self._answer(409, {"error": why})

    def _answer(self, status: int, answer: dict[str, Any]) -> None:
        """An answer sealed for this request; its reason stays out of the status line, which travels in clear."""
        self.set_status(status)
        self.set_header("Content-Type", SEALED_CONTENT_TYPE)
        self.finish(self._sealer.seal_bytes(json.dumps(answer).encode(), sealing_context(answer_context, self.request)))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """Refusals (401), before the key is known to be shared: in clear."""
        self.finish({"error": self._reason})


def members_route(secret: str, on_join: JoinHandler) -> tuple[str, type, dict]:
    return (MEMBERS_PATH, MembersHandler, {"secret": secret, "sealer": Sealer(secret), "on_join": on_join})


def request_join(
    peers: Sequence[str],
    replica: int,
    raft_address: str,
    peer_url: str,
    secret: str,
    deadline_s: float = JOIN_DEADLINE_S,
) -> str:
    """Ask the live replicas, in turn, to swap this node in as ``replica``, until one has; returns its URL.
    Blocking (run it on a thread); RuntimeError with every refusal when the deadline passes."""
    body = json.dumps({"replica": replica, "raft_address": raft_address, "peer_url": peer_url}).encode()
    sealer = Sealer(secret)
    problems: dict[str, str] = {}
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        for peer in peers:
            problem = _ask(peer, body, secret, sealer)
            if problem is None:
                return peer
            if problems.get(peer) != problem:  # each new refusal once: a replica's log shows why a join takes long
                log.warning("joining as replica %d through %s: %s; asking again", replica, peer, problem)
            problems[peer] = problem
        time.sleep(RETRY_S)
    raise RuntimeError(
        f"no live replica let this one join within {deadline_s:.0f} s: "
        + "; ".join(f"{peer}: {why}" for peer, why in problems.items())
    )


def _ask(peer: str, body: bytes, secret: str, sealer: Sealer) -> str | None:
    """None when ``peer`` made the change (and said so in an answer that opens), else why not."""
    where = urlsplit(peer)
    if where.hostname is None:
        return f"is no http://host:port address ({peer!r})"
    headers = auth_headers(secret, "POST", MEMBERS_PATH)
    timestamp = headers[TIME_HEADER]
    sealed = sealer.seal_bytes(body, request_context("POST", MEMBERS_PATH, timestamp))
    connection = http.client.HTTPConnection(where.hostname, where.port, timeout=CHANGE_TIMEOUT_S + 5)
    try:
        connection.request("POST", MEMBERS_PATH, sealed, {"Content-Type": SEALED_CONTENT_TYPE, **headers})
        response = connection.getresponse()
        answer = response.read()
    except OSError as err:
        return f"did not answer ({err})"
    finally:
        connection.close()
    if response.getheader("Content-Type") != SEALED_CONTENT_TYPE:  # a refusal in clear, or not a replica at all
        try:
            return f"{response.status}: {json.loads(answer)['error']}"
        except (ValueError, KeyError, TypeError):
            return f"{response.status}: {answer[:200]!r}"
    try:
        opened = json.loads(sealer.open_bytes(answer, answer_context("POST", MEMBERS_PATH, timestamp)))
    except SealedBodyError as err:
        return (
            f"{response.status} with an answer that does not open ({err}): it is not a replica of this kernel, "
            "or the answer was changed on the way"
        )
    except ValueError as err:
        return f"{response.status} with an answer that is not JSON ({err})"
    if response.status == 200:
        return None
    return f"{response.status}: {opened.get('error')}"
