"""Joining a kernel's Raft group through the peer API: the join request and its answer are sealed, and a joining
replica believes only an answer that opens. A real ObjectServer with the members route on 127.0.0.1; the Raft
side (`on_join`) is a stand-in that records the change it was asked for."""

from __future__ import annotations

import http.client
import json
import secrets
from concurrent.futures import Future

import pytest
import tornado.web

from notebookos.replication import membership
from notebookos.replication.membership import MEMBERS_PATH, members_route, request_join
from notebookos.replication.object_store import LocalDirectoryStore
from notebookos.replication.peer_store import TIME_HEADER, ObjectServer, auth_headers
from notebookos.replication.sealing import SEALED_CONTENT_TYPE, Sealer, answer_context, request_context
from tests.replication.relay import Relay

_ADDRESS = "10.99.88.77"  # what the join names: an eavesdropper must not learn it


@pytest.fixture
def secret() -> str:
    return secrets.token_urlsafe(24)


@pytest.fixture(autouse=True)
def _quick_retries(monkeypatch) -> None:
    """A refused join is asked again after RETRY_S; these tests' joins give up within half a second."""
    monkeypatch.setattr(membership, "RETRY_S", 0.05)


class _Members:
    """A live replica's peer API with a stand-in for its Raft membership change."""

    def __init__(self, tmp_path, secret: str, failure: str | None = None) -> None:
        self.joins: list[tuple[int, str, str]] = []
        self._failure = failure
        self.server = ObjectServer(
            LocalDirectoryStore(tmp_path / "store"), secret, routes=[members_route(secret, self._on_join)]
        )
        self.server.start()

    def _on_join(self, replica: int, address: str, url: str) -> Future[None]:
        done: Future[None] = Future()
        if self._failure:
            done.set_exception(RuntimeError(self._failure))
        else:
            self.joins.append((replica, address, url))
            done.set_result(None)
        return done


@pytest.fixture
def members(tmp_path, secret):
    live = _Members(tmp_path, secret)
    yield live
    live.server.stop()


def _join(peer: str, secret: str) -> str:
    return request_join([peer], 2, f"{_ADDRESS}:4321", f"http://{_ADDRESS}:5555", secret, deadline_s=0.5)


def test_a_join_is_made_and_nothing_it_names_crosses_in_clear(members, secret):
    relay = Relay(members.server.port)
    try:
        assert _join(relay.url, secret) == relay.url
    finally:
        relay.close()
    assert members.joins == [(2, f"{_ADDRESS}:4321", f"http://{_ADDRESS}:5555")]
    assert b"POST /members" in relay.sent and b" 200 " in relay.answered
    for wire in (relay.sent, relay.answered):
        assert _ADDRESS.encode() not in wire and b"raft_address" not in wire


def test_a_failed_change_is_reported_sealed_with_its_reason(tmp_path, secret):
    failing = _Members(tmp_path, secret, failure="node 10.99.88.77:4321 could not be added")
    relay = Relay(failing.server.port)
    try:
        with pytest.raises(RuntimeError, match="409: node 10.99.88.77:4321 could not be added"):
            _join(relay.url, secret)
    finally:
        relay.close()
        failing.server.stop()
    assert _ADDRESS.encode() not in relay.answered  # not in the body, nor in the status line's reason


def test_a_join_with_another_kernels_password_is_refused_in_clear(members):
    with pytest.raises(RuntimeError, match="401: the request's signature does not match"):
        _join(members.server.url, "another kernel's password")
    assert members.joins == []


def test_a_tampered_join_request_is_refused_and_no_change_made(members, secret):
    body = json.dumps({"replica": 2, "raft_address": f"{_ADDRESS}:4321", "peer_url": f"http://{_ADDRESS}:5555"})
    headers = auth_headers(secret, "POST", MEMBERS_PATH)
    sealed = bytearray(
        Sealer(secret).seal_bytes(body.encode(), request_context("POST", MEMBERS_PATH, headers[TIME_HEADER]))
    )
    sealed[-1] ^= 1
    connection = http.client.HTTPConnection("127.0.0.1", members.server.port, timeout=5)
    try:
        connection.request("POST", MEMBERS_PATH, bytes(sealed), headers)
        response = connection.getresponse()
        answer = response.read()
    finally:
        connection.close()
    assert response.status == 400 and response.getheader("Content-Type") == SEALED_CONTENT_TYPE
    opened = json.loads(Sealer(secret).open_bytes(answer, answer_context("POST", MEMBERS_PATH, headers[TIME_HEADER])))
    assert "the join request does not open" in opened["error"]
    assert members.joins == []


class _ForgedYes(tornado.web.RequestHandler):
    """A man in the middle's answer: 200, labelled sealed, but not sealed with the kernel's key."""

    def post(self) -> None:
        self.set_header("Content-Type", SEALED_CONTENT_TYPE)
        self.finish(Sealer("not the kernel's password").seal_bytes(b'{"replica": 2}', b"any context"))


def test_a_forged_yes_is_not_believed(tmp_path, secret):
    impostor = ObjectServer(
        LocalDirectoryStore(tmp_path / "impostor"), "its own password", routes=[(MEMBERS_PATH, _ForgedYes, {})]
    )
    impostor.start()
    try:
        with pytest.raises(RuntimeError, match="200 with an answer that does not open.*not a replica of this kernel"):
            _join(impostor.url, secret)
    finally:
        impostor.stop()
