"""Objects shared among replicas on machines with private disks: real object servers on 127.0.0.1, real HTTP.

Each "machine" is a LocalDirectoryStore in a directory of its own, served by an ObjectServer, and read and written
through a PeerStore that knows the other machines' servers. Losing a machine = stopping its server and deleting
its directory. A Relay between a store and a server is an eavesdropper, or a man in the middle, on the network.
"""

from __future__ import annotations

import array
import hashlib
import hmac
import http.client
import os
import re
import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import tornado.web

from notebookos.replication.object_store import (
    LocalDirectoryStore,
    ObjectCorruptError,
    ObjectMissingError,
    content_key,
)
from notebookos.replication.peer_store import (
    AUTH_SCHEME,
    MAX_CLOCK_SKEW_S,
    TIME_HEADER,
    ObjectServer,
    PeerStore,
    TooFewCopiesError,
    auth_headers,
)
from notebookos.replication.sealing import (
    CHUNK_SIZE,
    SealedBodyError,
    Sealer,
    answer_context,
    request_context,
)
from tests.replication import test_store_contract as contract
from tests.replication.relay import Relay

_TIMEOUT_S = 5.0  # a peer's silence; only reached if something hangs (stopped servers refuse at once)


@dataclass
class Machine:
    """One replica's machine: its disk (a directory), its store, its object server, and the store it uses."""

    directory: Path
    local: LocalDirectoryStore
    server: ObjectServer
    store: PeerStore

    def object_file(self, key: str) -> Path:
        digest = key.removeprefix("sha256:")
        return self.directory / digest[:2] / digest

    def lose(self) -> None:
        """The machine is gone: nothing answers at its address, and its disk is lost."""
        self.server.stop()
        shutil.rmtree(self.directory)


class _UnverifiedStore(LocalDirectoryStore):
    """Hands out whatever bytes its files hold, as a store without checks (or a bit flip on the way) would."""

    def get(self, key: str) -> bytes:
        return self._path(key).read_bytes()


def _machines(tmp_path: Path, names: str, secret: str, liars: str = "") -> list[Machine]:
    """Machines that each know the others' servers (through a callable, so a lost one stays listed); those named
    in `liars` serve their files unverified."""
    machines: list[Machine] = []
    for name in names:
        local = (_UnverifiedStore if name in liars else LocalDirectoryStore)(tmp_path / name)
        server = ObjectServer(local, secret, "127.0.0.1", 0)
        server.start()

        def others(me: ObjectServer = server) -> list[str]:
            return [machine.server.url for machine in machines if machine.server is not me]

        machines.append(Machine(tmp_path / name, local, server, PeerStore(local, others, secret, timeout=_TIMEOUT_S)))
    return machines


@pytest.fixture
def secret() -> str:
    return secrets.token_hex(16)


@pytest.fixture
def cluster(tmp_path, secret):
    """Three machines, A, B and C: one kernel's three replicas."""
    machines = _machines(tmp_path, "abc", secret)
    yield machines
    for machine in machines:
        machine.server.stop()


def _request(server: ObjectServer, method: str, path: str, headers: dict[str, str], body: bytes | None = None):
    """One raw HTTP request to `server`: (status, body)."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=_TIMEOUT_S)
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def _sealed_put(secret: str, path: str, data: bytes) -> tuple[dict[str, str], bytes]:
    """The headers and the sealed body of a PUT of `data` to `path`, as a PeerStore sends them."""
    headers = auth_headers(secret, "PUT", path)
    return headers, Sealer(secret).seal_bytes(data, request_context("PUT", path, headers[TIME_HEADER]))


def _open_answer(secret: str, method: str, path: str, headers: dict[str, str], sealed: bytes) -> bytes:
    """The server's sealed answer to a request sent with `headers`, opened with `secret`'s key."""
    return Sealer(secret).open_bytes(sealed, answer_context(method, path, headers[TIME_HEADER]))


def _signed(secret: str, method: str, path: str, timestamp: int) -> dict[str, str]:
    """The documented scheme, written out independently of the module's own signing."""
    message = f"notebookos-objects-v1\n{method}\n{path}\n{timestamp}".encode()
    signature = hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()
    return {"Authorization": f"{AUTH_SCHEME} {signature}", TIME_HEADER: str(timestamp)}


# -------------------------------------------------------------------------------------------- replication


def test_put_returns_once_a_peer_holds_the_object_and_every_replica_reads_it(cluster):
    a, b, c = cluster
    data = os.urandom(200_000)
    key = a.store.put(data)
    assert key == content_key(data)
    assert a.local.contains(key)
    assert b.local.contains(key) or c.local.contains(key)  # checked on the peers' own disks, right after put
    assert b.store.get(key) == data
    assert c.store.get(key) == data
    assert b.local.get(key) == data and c.local.get(key) == data  # each reader keeps its copy


def test_objects_survive_the_loss_of_the_machine_that_wrote_them(cluster):
    a, b, c = cluster
    data = os.urandom(50_000)
    key = a.store.put(data)
    a.lose()
    assert b.store.get(key) == data
    assert c.store.get(key) == data


def test_put_with_every_peer_down_raises_saying_what_to_do_and_keeps_the_local_copy(cluster):
    a, b, c = cluster
    b.server.stop()
    c.server.stop()
    data = b"state that cannot be replicated"
    with pytest.raises(TooFewCopiesError) as raised:
        a.store.put(data)
    message = str(raised.value)
    assert "on this machine only" in message and "will not survive the loss of this machine" in message
    assert b.server.url in message and c.server.url in message and "refused the connection" in message
    assert "run the cell again" in message
    assert raised.value.key == content_key(data) and raised.value.copies == 1
    assert a.local.get(content_key(data)) == data


def test_put_with_one_peer_down_succeeds(cluster):
    a, b, c = cluster
    c.server.stop()
    key = a.store.put(b"two copies are enough")
    assert b.local.get(key) == b"two copies are enough"


def test_put_without_peers_needs_min_copies_of_one(tmp_path, secret):
    local = LocalDirectoryStore(tmp_path / "alone")
    with pytest.raises(TooFewCopiesError, match="no other replica of this kernel is known"):
        PeerStore(local, list, secret).put(b"x")
    assert local.contains(content_key(b"x"))
    assert PeerStore(local, list, secret, min_copies=1).put(b"y") == content_key(b"y")


def test_put_waits_for_as_many_copies_as_asked(cluster, secret):
    a, b, c = cluster
    everywhere = PeerStore(a.local, lambda: [b.server.url, c.server.url], secret, min_copies=3)
    key = everywhere.put(b"on all three")
    assert b.local.contains(key) and c.local.contains(key)


def test_a_peer_with_a_corrupt_copy_is_skipped_and_the_good_copy_fetched(cluster, secret):
    a, b, c = cluster
    data = b"the good bytes"
    key = b.local.put(data)
    c.local.put(data)
    b.object_file(key).write_bytes(b"the bad bytes!")  # same size: only the hash tells
    reader = PeerStore(a.local, lambda: [b.server.url, c.server.url], secret)
    assert reader.get(key) == data
    assert a.local.get(key) == data


def test_bytes_that_do_not_hash_to_the_key_are_rejected_by_the_reader(tmp_path, secret):
    liar, honest, reader = _machines(tmp_path, "lhr", secret, liars="l")
    try:
        data = b"what was written"
        key = liar.local.put(data)
        honest.local.put(data)
        liar.object_file(key).write_bytes(b"what was damaged")
        fetching = PeerStore(reader.local, lambda: [liar.server.url, honest.server.url], secret)
        assert fetching.get(key) == data
        liar_only = PeerStore(LocalDirectoryStore(tmp_path / "empty"), lambda: [liar.server.url], secret)
        with pytest.raises(ObjectMissingError, match=r"sent bytes that hash to sha256:[0-9a-f]{64}"):
            liar_only.get(key)
    finally:
        for machine in (liar, honest, reader):
            machine.server.stop()


def test_a_corrupt_local_copy_is_replaced_from_a_peer(cluster):
    a, b, c = cluster
    data = b"a checkpoint"
    key = a.store.put(data)
    b.local.put(data)
    a.object_file(key).write_bytes(b"a chickpoint")
    assert a.store.get(key) == data
    assert a.local.get(key) == data


def test_an_object_no_replica_has_raises_missing_naming_the_key_and_the_peers_asked(cluster):
    a, b, c = cluster
    key = content_key(b"never written")
    with pytest.raises(ObjectMissingError) as raised:
        a.store.get(key)
    message = str(raised.value)
    assert key in message and "any of the 2 other replicas asked" in message
    assert message.count("does not have it") == 2 and "recompute" in message


def test_a_corrupt_local_copy_that_no_peer_has_raises_corrupt(tmp_path, secret):
    store = PeerStore(LocalDirectoryStore(tmp_path / "alone"), list, secret, min_copies=1)
    key = store.put(b"only here")
    (file,) = [path for path in (tmp_path / "alone").rglob("*") if path.is_file()]
    file.write_bytes(b"only hare")
    with pytest.raises(ObjectCorruptError, match=re.escape(key) + ".*corrupt on this replica.*0 asked"):
        store.get(key)


def test_objects_of_any_item_size_and_the_empty_object_cross_machines(cluster):
    a, b, c = cluster
    numbers = array.array("d", [1.5, 2.5, 3.5])
    key = a.store.put(memoryview(numbers))
    empty = a.store.put(b"")
    a.lose()
    assert b.store.get(key) == numbers.tobytes()
    assert c.store.get(empty) == b""


def test_contract_contains_and_delete(cluster):
    contract.test_contains_and_delete(cluster[0].store)


def test_contract_missing_object(tmp_path, secret):
    alone = PeerStore(LocalDirectoryStore(tmp_path / "alone"), list, secret, min_copies=1)
    contract.test_missing_object_raises_object_missing_error_naming_the_key(alone)


# -------------------------------------------------------------------------------------------- the server


def test_head_and_get_answer_present_and_missing_objects(cluster, secret):
    a = cluster[0]
    key = a.local.put(b"served")
    missing = content_key(b"absent")
    for method, wanted_key, status in [("HEAD", key, 200), ("HEAD", missing, 404)]:
        path = f"/objects/{wanted_key}"
        assert _request(a.server, method, path, auth_headers(secret, method, path)) == (status, b"")
    path = f"/objects/{key}"
    headers = auth_headers(secret, "GET", path)
    status, body = _request(a.server, "GET", path, headers)
    assert status == 200 and b"served" not in body
    assert _open_answer(secret, "GET", path, headers, body) == b"served"
    path = f"/objects/{missing}"
    status, body = _request(a.server, "GET", path, auth_headers(secret, "GET", path))
    assert status == 404 and missing.encode() in body


def test_a_wrong_secret_is_refused_with_401_and_nothing_is_stored(cluster, secret):
    a, b, c = cluster
    data = b"from another kernel"
    path = f"/objects/{content_key(data)}"
    status, body = _request(a.server, "PUT", path, auth_headers("not the secret", "PUT", path), data)
    assert status == 401 and b"signature does not match" in body
    assert _request(a.server, "GET", path, auth_headers("not the secret", "GET", path))[0] == 401
    assert _request(a.server, "GET", path, {})[0] == 401
    assert _request(a.server, "GET", path, {"Authorization": f"{AUTH_SCHEME} \u00e9", TIME_HEADER: "\u00b2"})[0] == 401
    now = str(int(time.time()))
    assert _request(a.server, "GET", path, {"Authorization": f"{AUTH_SCHEME} \u00e9", TIME_HEADER: now})[0] == 401
    assert not a.local.contains(content_key(data))
    stranger = PeerStore(LocalDirectoryStore(a.directory.parent / "stranger"), lambda: [a.server.url], "not it")
    with pytest.raises(TooFewCopiesError, match="refused our credentials"):
        stranger.put(data)
    assert not a.local.contains(content_key(data))


def test_a_signature_is_bound_to_its_method_path_and_time(cluster, secret):
    a = cluster[0]
    key = a.local.put(b"x")
    path = f"/objects/{key}"
    now = int(time.time())
    assert _request(a.server, "GET", path, _signed(secret, "GET", path, now))[0] == 200
    assert _request(a.server, "GET", path, _signed(secret, "HEAD", path, now))[0] == 401
    assert _request(a.server, "GET", path, _signed(secret, "GET", f"/objects/{content_key(b'y')}", now))[0] == 401
    status, body = _request(a.server, "GET", path, _signed(secret, "GET", path, now - MAX_CLOCK_SKEW_S - 60))
    assert status == 401 and b"clock" in body


def test_a_put_whose_body_does_not_hash_to_the_key_is_refused_with_400_and_nothing_stored(cluster, secret):
    a = cluster[0]
    claimed = content_key(b"what the key says")
    path = f"/objects/{claimed}"
    status, body = _request(a.server, "PUT", path, *_sealed_put(secret, path, b"something else"))
    assert status == 400 and content_key(b"something else").encode() in body
    assert not a.local.contains(claimed) and not a.local.contains(content_key(b"something else"))
    assert [path for path in a.directory.rglob("*") if path.is_file()] == []


def test_a_malformed_key_is_refused_with_400(cluster, secret):
    a = cluster[0]
    path = "/objects/sha256:..%2F..%2Fetc%2Fpasswd"
    status, body = _request(a.server, "GET", path, auth_headers(secret, "GET", path))
    assert status == 400 and b"not an object store key" in body


def test_a_put_is_idempotent(cluster, secret):
    a = cluster[0]
    data = b"twice"
    path = f"/objects/{content_key(data)}"
    for _ in range(2):
        assert _request(a.server, "PUT", path, *_sealed_put(secret, path, data))[0] == 204
    assert a.local.get(content_key(data)) == data


def test_a_100_mb_object_round_trip(cluster, tmp_path, secret):
    a, b, c = cluster
    data = os.urandom(100 << 20)
    started = time.perf_counter()
    key = a.store.put(data)
    put_s = time.perf_counter() - started
    reader = PeerStore(LocalDirectoryStore(tmp_path / "reader"), lambda: [a.server.url], secret)
    started = time.perf_counter()
    assert reader.get(key) == data
    get_s = time.perf_counter() - started
    print(f"\n100 MiB over loopback: put (here + 1st of 2 peers) {put_s:.2f} s, get (fetch, check, keep) {get_s:.2f} s")


# -------------------------------------------------------------------------------------------- confidentiality


_PATTERN = b"NOTEBOOKOS-PLAINTEXT-MARKER:"  # what an eavesdropper would look for: it is in every object below


def _recognizable(size: int) -> bytes:
    """`size` bytes full of _PATTERN, so that any stretch of plaintext on the wire would show."""
    return (_PATTERN * (size // len(_PATTERN) + 1))[:size]


@pytest.fixture
def relay_to_a(cluster):
    """A Relay in front of machine A's object server."""
    relay = Relay(cluster[0].server.port)
    yield relay
    relay.close()


def test_an_eavesdropper_sees_no_object_bytes_pushed_or_fetched(cluster, relay_to_a, tmp_path, secret):
    a, b, c = cluster
    data = _recognizable(3 * CHUNK_SIZE + 12_345)  # several chunks and a short last one
    writer = PeerStore(b.local, lambda: [relay_to_a.url], secret, timeout=_TIMEOUT_S)
    key = writer.put(data)
    assert a.local.get(key) == data  # A got it, through the relay, and keeps it in clear at rest
    reader = PeerStore(LocalDirectoryStore(tmp_path / "reader"), lambda: [relay_to_a.url], secret)
    assert reader.get(key) == data
    assert b"PUT /objects/" in relay_to_a.sent and b"GET /objects/" in relay_to_a.sent
    for wire in (relay_to_a.sent, relay_to_a.answered):
        assert _PATTERN not in wire and _PATTERN[:12] not in wire
    assert len(relay_to_a.sent) > len(data) and len(relay_to_a.answered) > len(data)  # the object went both ways


def test_a_tampered_put_body_is_refused_with_400_and_nothing_is_stored(cluster, secret):
    a = cluster[0]
    data = _recognizable(100_000)
    path = f"/objects/{content_key(data)}"
    headers, sealed = _sealed_put(secret, path, data)
    tampered = bytearray(sealed)
    tampered[len(tampered) // 2] ^= 1
    status, body = _request(a.server, "PUT", path, headers, bytes(tampered))
    assert status == 400 and b"does not open" in body and b"changed on the way" in body
    assert b"nothing stored" in body
    assert not a.local.contains(content_key(data))


def test_a_put_body_in_clear_or_sealed_for_another_request_is_refused(cluster, secret):
    a = cluster[0]
    data = b"x" * 1000
    path = f"/objects/{content_key(data)}"
    status, body = _request(a.server, "PUT", path, auth_headers(secret, "PUT", path), data)  # in clear
    assert status == 400 and b"does not open" in body
    status, body = _request(a.server, "PUT", path, auth_headers(secret, "PUT", path), b"short")  # no sealing's size
    assert status == 400 and b"not a sealed notebookos body" in body
    other = f"/objects/{content_key(b'another object')}"
    _, sealed_for_other = _sealed_put(secret, other, data)  # a captured body, replayed onto another key
    status, body = _request(a.server, "PUT", path, auth_headers(secret, "PUT", path), sealed_for_other)
    assert status == 400 and b"does not open" in body
    assert [path for path in a.directory.rglob("*") if path.is_file()] == []


def test_a_get_answer_cannot_be_read_with_another_kernels_password(cluster, secret):
    a = cluster[0]
    data = _recognizable(50_000)
    key = a.local.put(data)
    path = f"/objects/{key}"
    headers = auth_headers(secret, "GET", path)
    status, sealed = _request(a.server, "GET", path, headers)
    assert status == 200 and _PATTERN not in sealed
    with pytest.raises(SealedBodyError, match="sealed under another kernel's secret"):
        _open_answer("another kernel's password", "GET", path, headers, sealed)
    with pytest.raises(SealedBodyError):  # nor as the answer to another request (a replayed answer)
        Sealer(secret).open_bytes(sealed, answer_context("GET", path, str(int(headers[TIME_HEADER]) - 1)))
    assert _open_answer(secret, "GET", path, headers, sealed) == data


def test_a_get_answer_changed_on_the_way_is_rejected_and_not_kept(cluster, tmp_path, secret):
    a = cluster[0]
    data = _recognizable(200_000)
    key = a.local.put(data)
    man_in_the_middle = Relay(a.server.port, flip_answer_at=1000)  # past the headers: in the first chunk
    try:
        reader = PeerStore(LocalDirectoryStore(tmp_path / "reader"), lambda: [man_in_the_middle.url], secret)
        with pytest.raises(ObjectMissingError, match="sent an answer that does not open .*changed on the way"):
            reader.get(key)
        assert not reader.local.contains(key)
    finally:
        man_in_the_middle.close()


def test_a_large_object_crosses_sealed_in_chunks_and_round_trips(cluster, tmp_path, secret):
    a, b, c = cluster
    data = os.urandom(20 << 20) + b"tail"  # 20 MiB and a partial chunk
    key = a.store.put(data)
    assert b.local.contains(key) or c.local.contains(key)
    reader = PeerStore(LocalDirectoryStore(tmp_path / "reader"), lambda: [b.server.url, c.server.url], secret)
    assert reader.get(key) == data


class _ServesInClear(tornado.web.RequestHandler):
    """An object server of an older version, or an impostor: it answers every GET with the bytes in clear."""

    def get(self, key: str) -> None:
        self.finish(b"served in clear")


def test_an_answer_in_clear_is_rejected(tmp_path, secret):
    impostor = ObjectServer(
        LocalDirectoryStore(tmp_path / "impostor"), secret, routes=[(r"/clear/objects/(.+)", _ServesInClear, {})]
    )
    impostor.start()
    try:
        reader = PeerStore(LocalDirectoryStore(tmp_path / "reader"), lambda: [impostor.url + "/clear"], secret)
        with pytest.raises(ObjectMissingError, match="answered with an unsealed body"):
            reader.get(content_key(b"served in clear"))
        assert not reader.local.contains(content_key(b"served in clear"))
    finally:
        impostor.stop()
