"""Objects shared among a kernel's replicas over HTTP, for replicas on machines that share no disk.

Why. The executor writes each large payload to its object store and logs only the key; a standby applies the
entry by reading the object. With each replica on its own machine, the default store (a directory on that
machine's disk) holds the object on the executor's machine only: standbys elsewhere cannot read it, and it is lost
with that machine. Two pieces fix both:

- `ObjectServer` serves one replica's local store to the kernel's other replicas (`GET`, `HEAD` and `PUT` on
  `/objects/<key>`). It runs on a thread with its own event loop, because the replica's main thread runs user code
  for minutes at a time and object traffic must not wait for it.
- `PeerStore` is the store a replica uses when it has peers. `put` writes locally and returns once the object is
  on `min_copies` machines (this one and one peer by default), so the log entry that holds the key commits only
  once the object survives the loss of any single machine. `get` reads locally, else fetches from a peer, checks
  the bytes against the key and keeps a copy.

Authentication. The replicas of a kernel share a secret (its Raft password). Every request carries
`Authorization: NotebookOS-HMAC <hex>`, the HMAC-SHA256 under that secret of
`"notebookos-objects-v1\\n<METHOD>\\n<path>\\n<timestamp>"`, and `X-NotebookOS-Time: <timestamp>` (Unix seconds).
The secret itself never crosses the network. A signature is good for one method on one path for as long as its
timestamp is within MAX_CLOCK_SKEW_S of the server's clock, which bounds replays; and a replay can at worst read
an object again or store the very object its key names, since a PUT body must hash to the key in the path.
Readers also check that the bytes they get hash to the key. Answers are authenticated when they carry a body
(sealed, below); the bare status that answers a HEAD or a PUT is not.

Confidentiality. Every body is sealed (AES-256-GCM under a key derived from the same secret, see `sealing`): a
PUT's object is encrypted chunk by chunk on its way to the socket and decrypted into the receiving buffer as it
arrives, and a GET's answer likewise, each bound to its request's method, path and timestamp. A body that does not
open is refused (400) or, in an answer, counted as that peer's failure: it is never stored. The request line (so
the object's key), status codes and error explanations travel in clear; each store keeps its objects in clear.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import hmac
import http.client
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, as_completed
from typing import Any
from urllib.parse import urlsplit

import tornado.httpserver
import tornado.httputil
import tornado.iostream
import tornado.netutil
import tornado.web

from .object_store.base import (
    KEY_PREFIX,
    ObjectCorruptError,
    ObjectMissingError,
    ObjectStore,
    ObjectStoreError,
    StoreFullError,
    key_digest,
)
from .sealing import (
    SEALED_CONTENT_TYPE,
    Opener,
    SealedBodyError,
    Sealer,
    answer_context,
    plaintext_size,
    request_context,
    sealed_size,
)

__all__ = [
    "AUTH_SCHEME",
    "DEFAULT_TIMEOUT_S",
    "MAX_CLOCK_SKEW_S",
    "MAX_OBJECT_SIZE",
    "TIME_HEADER",
    "ObjectServer",
    "PeerStore",
    "TooFewCopiesError",
    "auth_headers",
    "sealing_context",
]

_log = logging.getLogger(__name__)

AUTH_SCHEME = "NotebookOS-HMAC"
TIME_HEADER = "X-NotebookOS-Time"
MAX_CLOCK_SKEW_S = 300  # generous for unsynchronized clocks; a captured request is replayable for this long
MAX_OBJECT_SIZE = 16 << 30  # a payload holds a cell's changed tensors: a fine-tuned model's weights are several GB
DEFAULT_TIMEOUT_S = 60.0  # a live peer's longest silence: reading and hashing a GB-sized object off a slow disk
_CONNECT_TIMEOUT_S = 5.0  # a machine that is up accepts a connection within milliseconds; one that is not, never
_SLOW_DISK_BYTES_PER_S = 50 << 20  # added to the wait for a PUT's answer, per byte the peer must write and fsync
_SIGNED_LABEL = "notebookos-objects-v1"  # keeps these signatures apart from anything else keyed by the password
_ERROR_HEADER = "X-NotebookOS-Error"
_THREAD_TIMEOUT_S = 10.0  # how long start() and stop() wait for the server's thread


class TooFewCopiesError(ObjectStoreError):
    """`put` could not place the object on `min_copies` machines: it would not survive the loss of this one.

    The object is stored on this machine (and on `copies - 1` peers); the caller should not commit its key.
    """

    def __init__(self, message: str, key: str, copies: int) -> None:
        super().__init__(message)
        self.key = key
        self.copies = copies


class _PeerError(Exception):
    """One peer could not do what was asked; the message says what happened, from the peer's URL on."""


def auth_headers(secret: str, method: str, path: str) -> dict[str, str]:
    """The headers that prove knowledge of `secret` for one request (see the module docstring), signed now."""
    timestamp = str(int(time.time()))
    return {"Authorization": f"{AUTH_SCHEME} {_signature(secret, method, path, timestamp)}", TIME_HEADER: timestamp}


def _signature(secret: str, method: str, path: str, timestamp: str) -> str:
    message = "\n".join((_SIGNED_LABEL, method, path, timestamp)).encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def refusal(secret: str, request: tornado.httputil.HTTPServerRequest) -> str | None:
    """Why `request` does not prove knowledge of `secret`, or None when it does."""
    scheme, _, signature = request.headers.get("Authorization", "").partition(" ")
    timestamp = request.headers.get(TIME_HEADER, "")
    if scheme != AUTH_SCHEME or not signature or not _is_number(timestamp):
        return f"this object server only answers requests signed with '{AUTH_SCHEME}' and '{TIME_HEADER}' headers"
    if abs(time.time() - int(timestamp)) > MAX_CLOCK_SKEW_S:
        return (
            f"the request's timestamp is more than {MAX_CLOCK_SKEW_S} s away from this server's clock: it is a "
            "replay, or the two machines' clocks disagree (synchronize them, e.g. with NTP)"
        )
    expected = _signature(secret, request.method or "", request.path, timestamp)
    if not hmac.compare_digest(signature.encode(), expected.encode()):  # bytes: headers may hold any character
        return "the request's signature does not match: it was not signed with this kernel's secret"
    return None


def sealing_context(make: Callable[[str, str, str], bytes], request: tornado.httputil.HTTPServerRequest) -> bytes:
    """What the body of a signed `request` (make=request_context) or of its answer (answer_context) is sealed for:
    its method, path and signed timestamp. Call it once `refusal` has passed the request."""
    return make(request.method or "", request.path, request.headers[TIME_HEADER])


def _is_number(text: str) -> bool:
    """Whether `text` is a decimal number int() reads (str.isdigit alone also accepts '²')."""
    return text.isascii() and text.isdigit()


def _require_secret(secret: str) -> None:
    """An empty secret would let anyone on the network read and write the kernel's objects."""
    if not isinstance(secret, str) or not secret:
        raise ValueError("the object server secret must be a non-empty string: pass the kernel's Raft password")


# ---------------------------------------------------------------------------------------------------- serving


class ObjectServer:
    """Serves `store` (a replica's own, local store) to the kernel's other replicas, from a thread of its own.

    Serve the local store, never a PeerStore: a server that forwarded misses to its peers would send requests
    around in circles. `port` 0 picks a free port; `url` then says which. When `address` is a wildcard
    ('0.0.0.0', '::'), tell the peers this machine's reachable address rather than `url`.
    """

    def __init__(
        self,
        store: ObjectStore,
        secret: str,
        address: str = "127.0.0.1",
        port: int = 0,
        routes: Sequence[tuple[str, type, dict]] = (),
    ) -> None:
        _require_secret(secret)
        self.store = store
        self._routes = list(routes)  # more of the kernel's peer API (membership), served beside the objects
        self.address = address
        self._secret = secret
        self._sealer = Sealer(secret)
        self._requested_port = port
        self._bound_port: int | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()
        self._failure: BaseException | None = None

    def __repr__(self) -> str:
        port = self._bound_port or self._requested_port
        return f"ObjectServer({self.store!r}, address={self.address!r}, port={port})"

    @property
    def port(self) -> int:
        """The port the server listens on (or last listened on)."""
        if self._bound_port is None:
            raise RuntimeError("the object server has not been started: call start() first")
        return self._bound_port

    @property
    def url(self) -> str:
        """The base URL peers reach this server at, e.g. 'http://127.0.0.1:41234'."""
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"http://{host}:{self.port}"

    def start(self) -> None:
        """Listen, then serve on a new thread. The socket is bound here, so an unusable port raises here."""
        if self._thread is not None:
            raise RuntimeError(f"the object server at {self.url} is already running")
        try:
            sockets = tornado.netutil.bind_sockets(self._requested_port, self.address)
        except OSError as error:
            raise ObjectStoreError(
                f"the object server cannot listen on {self.address}:{self._requested_port}: {error.strerror}. "
                "Choose a free port (0 picks one) and an address of this machine."
            ) from error
        self._bound_port = sockets[0].getsockname()[1]
        self._ready.clear()
        self._failure = None
        self._thread = threading.Thread(target=self._run, args=(sockets,), name="notebookos-objects", daemon=True)
        self._thread.start()
        if not self._ready.wait(_THREAD_TIMEOUT_S) or self._failure is not None:
            self._thread = None
            problem = f"failed: {self._failure!r}" if self._failure else f"did not start within {_THREAD_TIMEOUT_S} s"
            raise ObjectStoreError(f"the object server at {self.url} {problem}; see this process's log for details")

    def stop(self) -> None:
        """Close the listening socket and every open connection, then end the thread; a no-op when not running."""
        if self._thread is None:
            return
        assert self._loop is not None and self._stopping is not None
        self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(_THREAD_TIMEOUT_S)
        if self._thread.is_alive():
            _log.warning("the object server at %s did not stop within %s s", self.url, _THREAD_TIMEOUT_S)
        self._thread = None

    def _run(self, sockets: list[Any]) -> None:
        try:
            asyncio.run(self._serve(sockets))
        except BaseException as error:  # noqa: BLE001 - start() reports it; nothing else can
            self._failure = error
            self._ready.set()
            _log.exception("the object server at %s failed", self.url)

    async def _serve(self, sockets: list[Any]) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        objects = {"store": self.store, "secret": self._secret, "sealer": self._sealer}
        application = tornado.web.Application(
            [(r"/objects/([^/]+)", _ObjectHandler, objects), *self._routes],
            log_function=_log_request,
        )
        server = tornado.httpserver.HTTPServer(application, max_body_size=sealed_size(MAX_OBJECT_SIZE))
        server.add_sockets(sockets)
        self._ready.set()
        await self._stopping.wait()
        server.stop()
        await server.close_all_connections()


def _log_request(handler: tornado.web.RequestHandler) -> None:
    """Refusals and failures deserve a warning; the rest is debug, 404s included: every put asks HEAD first."""
    status, request = handler.get_status(), handler.request
    level = logging.DEBUG if status < 400 or status == 404 else logging.WARNING
    _log.log(level, "%d %s %s from %s", status, request.method, request.path, request.remote_ip)


@tornado.web.stream_request_body
class _ObjectHandler(tornado.web.RequestHandler):
    """`/objects/<key>`. Store calls run on the loop's executor: a 100 MB read or fsync must not stall other
    requests. PUT bodies are opened as they arrive into one buffer of the object's size, and hashed as they open;
    GET answers are sealed chunk by chunk as the socket takes them."""

    def initialize(self, store: ObjectStore, secret: str, sealer: Sealer) -> None:
        self._store = store
        self._secret = secret
        self._sealer = sealer
        self._opener: Opener | None = None
        self._unopened: str | None = None  # why the PUT body did not open, once a chunk has failed
        self._hasher = hashlib.sha256()

    def compute_etag(self) -> str | None:
        """No ETag: tornado's would hash every response body on the loop, and a key never changes content."""
        return None

    def prepare(self) -> None:
        refused = refusal(self._secret, self.request)
        if refused is not None:
            self._answer(401, refused)
            return
        try:
            key_digest(self.path_args[0])
        except ValueError as error:
            self._answer(400, str(error))
            return
        if self.request.method == "PUT":
            self._expect_body()

    def _expect_body(self) -> None:
        """Allocate the object's buffer once, at its final size (no growing and copying as the body arrives)."""
        length = self.request.headers.get("Content-Length", "")
        if not _is_number(length):
            self._answer(411, "a PUT must announce its body's size in a Content-Length header")
            return
        try:
            size = plaintext_size(int(length))
        except SealedBodyError as error:
            self._answer(400, f"{error}; nothing stored")
            return
        if size > MAX_OBJECT_SIZE:
            self._answer(413, f"objects larger than {MAX_OBJECT_SIZE} bytes are not accepted")
            return
        try:
            self._opener = self._sealer.opener(sealing_context(request_context, self.request), int(length))
        except MemoryError:
            self._answer(507, f"this machine lacks the memory to receive a {size}-byte object right now")

    def data_received(self, chunk: bytes) -> None:
        if self._opener is None:
            return  # refused before its body arrived, or a chunk did not open
        try:
            for opened in self._opener.feed(chunk):
                self._hasher.update(opened)
        except SealedBodyError as error:
            self._opener, self._unopened = None, str(error)  # drop what opened: nothing of it may be kept

    async def get(self, key: str) -> None:
        try:
            data = await asyncio.get_running_loop().run_in_executor(None, self._store.get, key)
        except ObjectMissingError:
            self._answer(404, f"object {key} is not here")
            return
        except ObjectStoreError as error:  # corrupt here, or the store failed: the reader asks another replica
            self._answer(500, str(error))
            return
        self.set_header("Content-Type", SEALED_CONTENT_TYPE)
        self.set_header("Content-Length", str(sealed_size(len(data))))
        connection = self.request.connection
        assert connection is not None
        try:
            await self.flush()
            # Straight to the connection: RequestHandler.write takes bytes only, which would copy every piece.
            for piece in self._sealer.seal(memoryview(data), sealing_context(answer_context, self.request)):
                # Done once the socket has taken it: the buffer may then be reused. (The ignore: tornado annotates
                # `chunk: bytes`, but HTTP1Connection.write hands it to IOStream.write, which takes a memoryview.)
                await connection.write(piece)  # type: ignore[arg-type]
        except tornado.iostream.StreamClosedError:
            return  # the reader left (it reports its own failure)
        self.finish()

    async def head(self, key: str) -> None:
        try:
            present = await asyncio.get_running_loop().run_in_executor(None, self._store.contains, key)
        except ObjectStoreError as error:
            self._answer(500, str(error))
            return
        self.set_status(200 if present else 404)

    async def put(self, key: str) -> None:
        if self._opener is None:  # a chunk did not open, and data_received dropped the rest
            self._answer(400, f"{self._unopened}; nothing stored")
            return
        body = self._opener.plaintext()  # whole: tornado calls put once the announced Content-Length has arrived
        actual = KEY_PREFIX + self._hasher.hexdigest()
        if actual != key:
            self._answer(400, f"the body hashes to {actual}, not to the key {key} it was sent under; nothing stored")
            return
        try:
            await asyncio.get_running_loop().run_in_executor(None, self._store.put, memoryview(body))
        except StoreFullError as error:
            self._answer(507, str(error))
            return
        except ObjectStoreError as error:
            self._answer(500, str(error))
            return
        self.set_status(204)

    def _answer(self, status: int, message: str) -> None:
        """An error, explained in the body and again in a header: answers to HEAD have no body."""
        self.set_status(status)
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.set_header(_ERROR_HEADER, message.encode("ascii", "backslashreplace").decode())
        self.finish(message + "\n")


# ---------------------------------------------------------------------------------------------------- the store


class PeerStore(ObjectStore):
    """A replica's object store when the kernel's other replicas are on other machines; see the module docstring.

    `local` is this machine's store (serve it with an ObjectServer). `peers()` returns the base URLs of the other
    replicas' ObjectServers; it is called on every put and every fetch, since the kernel's membership changes when
    a replica is replaced. `min_copies` counts this machine. `timeout` is how long a peer may stay silent before it
    counts as unreachable: a transfer that keeps moving is never cut, however large the object, and the wait for
    a PUT's answer grows with the object (the peer writes it to disk first). Connecting takes at most 5 s of it.

    `put` sends `data` itself to the peers, and keeps sending it to the slower ones after it returns: leave `data`
    unchanged for that long (a changed buffer would only cost those copies, which the peers reject by its hash).
    """

    def __init__(
        self,
        local: ObjectStore,
        peers: Callable[[], list[str]],
        secret: str,
        min_copies: int = 2,
        timeout: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        _require_secret(secret)
        if min_copies < 1:
            raise ValueError(f"min_copies counts this machine's copy, so it is at least 1, not {min_copies}")
        if not timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds, not {timeout}")
        self.local = local
        self.min_copies = min_copies
        self.timeout = timeout
        self._connect_timeout = min(timeout, _CONNECT_TIMEOUT_S)
        self._peers = peers
        self._secret = secret
        self._sealer = Sealer(secret)

    def __repr__(self) -> str:
        return f"PeerStore({self.local!r}, min_copies={self.min_copies})"

    def put(self, data: bytes | memoryview) -> str:
        """Store locally, then on the peers; return once `min_copies` machines hold the object.

        Raises TooFewCopiesError (the object stays here) when too few peers are known or store it.
        """
        view = memoryview(data).cast("B")
        key = self.local.put(view)
        peers = self._current_peers()
        wanted = self.min_copies - 1
        if wanted > 0 and not peers:
            raise TooFewCopiesError(self._alone(key, view.nbytes), key, copies=1)
        pushes = {_in_thread(self._push, peer, key, view): peer for peer in peers}
        for push, peer in pushes.items():
            push.add_done_callback(functools.partial(_log_failed_push, peer=peer, key=key))
        copies, problems = self._await_copies(pushes, wanted)
        if copies < wanted:
            raise TooFewCopiesError(self._too_few(key, view.nbytes, len(peers), copies, problems), key, 1 + copies)
        return key

    def get(self, key: str) -> bytes:
        """This machine's copy; else the first peer's that hashes to `key`, kept here for next time."""
        try:
            return self.local.get(key)
        except ObjectMissingError:
            damaged = False
        except ObjectCorruptError:
            self.local.delete(key)  # worthless, and it would keep the good copy from being written over it
            damaged = True
        problems = []
        for peer in self._current_peers():
            try:
                data = self._fetch(peer, key)
            except _PeerError as error:
                problems.append(f"{peer} {error}")
                continue
            self._keep(key, data)
            return data
        raise self._not_found(key, damaged, problems)

    def contains(self, key: str) -> bool:
        """Whether this machine holds the object: what a replica can read without the network."""
        return self.local.contains(key)

    def delete(self, key: str) -> None:
        """Delete this machine's copy only: each replica frees its own objects as it applies the log."""
        self.local.delete(key)

    # ----------------------------------------------------------------------------------------- talking to peers

    def _current_peers(self) -> list[str]:
        """The peers now, each once: a URL listed twice is one machine, and must not count as two copies."""
        return list(dict.fromkeys(self._peers()))

    def _push(self, peer: str, key: str, view: memoryview) -> None:
        """Put the object on `peer` unless it already has it (HEAD first: also learns of refusals before
        sending hundreds of MB that a refusing server would cut off)."""
        if view.nbytes > MAX_OBJECT_SIZE:
            raise _PeerError(f"was not sent the object: object servers accept at most {MAX_OBJECT_SIZE} bytes")
        with self._connection(peer) as (connection, path):
            status, body = self._request(connection, "HEAD", path + key)
            if status == 200:
                return
            if status != 404:
                raise _PeerError(_failed(status, body))
            status, body = self._request(connection, "PUT", path + key, view)
            if status not in (200, 201, 204):
                raise _PeerError(_failed(status, body))

    def _fetch(self, peer: str, key: str) -> bytes:
        """The object from `peer`, checked against its key: a peer's disk or the network may have damaged it."""
        with self._connection(peer) as (connection, path):
            status, body = self._request(connection, "GET", path + key)
        if status == 404:
            raise _PeerError("does not have it")
        if status != 200:
            raise _PeerError(_failed(status, body))
        actual = hashlib.sha256(body).hexdigest()
        if KEY_PREFIX + actual != key:
            raise _PeerError(f"sent bytes that hash to {KEY_PREFIX}{actual}: they were damaged there or on the way")
        return body

    @contextlib.contextmanager
    def _connection(self, peer: str) -> Iterator[tuple[http.client.HTTPConnection, str]]:
        """A connection to `peer`, and the path prefix objects are under there."""
        parts = urlsplit(peer)
        try:
            if parts.scheme != "http" or not parts.hostname:
                raise ValueError("not an http:// URL")
            connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=self._connect_timeout)
        except ValueError as error:  # parts.port raises it too, for a port that is not a number
            raise _PeerError(f"is not the http:// URL of an object server ({error})") from error
        try:
            with self._network_errors(f"did not accept a connection within {self._connect_timeout} s (it is down)"):
                connection.connect()
            connection.sock.settimeout(self.timeout)
            yield connection, parts.path.rstrip("/") + "/objects/"
        finally:
            connection.close()

    def _request(
        self, connection: http.client.HTTPConnection, method: str, path: str, body: memoryview | None = None
    ) -> tuple[int, bytes]:
        """One signed request, its body sealed: its status, and the object opened (a GET's 200) or the server's
        explanation (errors, which travel in clear).

        Raises _PeerError, saying what went wrong, on network failure or an answer that does not open.
        """
        headers = auth_headers(self._secret, method, path)
        timestamp = headers[TIME_HEADER]
        sealed = None
        if body is not None:
            headers["Content-Type"] = SEALED_CONTENT_TYPE
            headers["Content-Length"] = str(sealed_size(body.nbytes))
            sealed = self._sealer.seal(body, request_context(method, path, timestamp))
        with self._network_errors(f"did not answer within {self.timeout} s"):
            connection.request(method, path, body=sealed, headers=headers)
            if body is not None:  # the peer hashes, writes and fsyncs the whole object before it answers
                connection.sock.settimeout(self.timeout + body.nbytes / _SLOW_DISK_BYTES_PER_S)
            response = connection.getresponse()
            if method == "GET" and response.status == 200:
                return 200, self._open(response, answer_context(method, path, timestamp))
            content = response.read()
        return response.status, (response.getheader(_ERROR_HEADER, "").encode() or content)

    def _open(self, response: http.client.HTTPResponse, context: bytes) -> bytes:
        """A sealed answer, read one sealed chunk at a time and opened as it comes.

        Returns bytes, as the store's contract says (io.BytesIO, which unpickles it, shares bytes but would copy
        a bytearray): the one copy of the object on this, the fetching, path.
        """
        length = response.getheader("Content-Length", "")
        if response.getheader("Content-Type") != SEALED_CONTENT_TYPE or not _is_number(length):
            raise _PeerError("answered with an unsealed body: it is not an object server of this notebookos version")
        try:
            opener = self._sealer.opener(context, int(length))
            while not opener.complete and (piece := response.read(opener.wanted)):
                for _ in opener.feed(piece):
                    pass
            return bytes(opener.plaintext())
        except SealedBodyError as error:
            raise _PeerError(
                f"sent an answer that does not open ({error}): it does not hold this kernel's secret, or the answer "
                "was changed on the way"
            ) from None

    @staticmethod
    @contextlib.contextmanager
    def _network_errors(timed_out: str) -> Iterator[None]:
        """Network failures as _PeerError, saying what happened (`timed_out` when the peer stayed silent)."""
        try:
            yield
        except TimeoutError as error:
            raise _PeerError(timed_out) from error
        except ConnectionRefusedError as error:
            raise _PeerError("refused the connection: no object server listens there (the replica is down)") from error
        except (OSError, http.client.HTTPException) as error:
            raise _PeerError(f"could not be talked to: {type(error).__name__}: {error}") from error

    # ------------------------------------------------------------------------------------------------ bookkeeping

    @staticmethod
    def _await_copies(pushes: dict[Future[None], str], wanted: int) -> tuple[int, list[str]]:
        """Wait until `wanted` pushes succeed or every push has ended: the copies made, and what went wrong."""
        copies = 0
        problems: list[str] = []
        if wanted == 0:
            return copies, problems
        for push in as_completed(pushes):
            error = push.exception()
            if error is None:
                copies += 1
                if copies >= wanted:
                    break
            else:
                problems.append(f"{pushes[push]} {error}")
        return copies, problems

    def _keep(self, key: str, data: bytes) -> None:
        """Keep a fetched object here: the next read is local, and this machine becomes one more copy of it."""
        try:
            self.local.put(data)
        except ObjectStoreError as error:
            _log.warning("object %s was fetched from a peer but could not be kept on this machine: %s", key, error)

    def _alone(self, key: str, size: int) -> str:
        return (
            f"object {key} ({size} bytes) is on this machine only: no other replica of this kernel is known, and "
            f"{self.min_copies} copies on different machines are required. The cell's state will not survive the "
            "loss of this machine. Wait until the kernel's other replicas are running, then run the cell again."
        )

    def _too_few(self, key: str, size: int, peers: int, copies: int, problems: list[str]) -> str:
        if copies == 0:
            where = "is on this machine only: no other replica of this kernel stored it"
        else:
            where = f"is on {1 + copies} machines, fewer than the {self.min_copies} required"
        details = "; ".join(problems) or f"only {peers} other replicas are known"
        return (
            f"object {key} ({size} bytes) {where} ({details}). The cell's state will not survive the loss of this "
            "machine. Check that the kernel's other replicas are running and that this machine can reach their "
            "object servers, then run the cell again."
        )

    def _not_found(self, key: str, damaged: bool, problems: list[str]) -> ObjectStoreError:
        here = "was corrupt on this replica (that copy is deleted)" if damaged else "is not on this replica"
        asked = (
            f"nor on any of the {len(problems)} other replicas asked ({'; '.join(problems)})"
            if problems
            else ("and no other replica of this kernel is known (0 asked)")
        )
        message = (
            f"object {key} {here} {asked}. If a replica that holds it is only down for now, try again once it is "
            "back; otherwise every machine that held it was lost or deleted it: recompute the values it held."
        )
        return ObjectCorruptError(message) if damaged else ObjectMissingError(message)


def _failed(status: int, explanation: bytes) -> str:
    """What a peer's error answer means, for a message."""
    said = explanation.decode("utf-8", "replace").strip()[:300] or http.client.responses.get(status, "no explanation")
    if status == 401:
        return f"refused our credentials (401: {said}); check that it belongs to this kernel"
    if status == 507:
        return f"is full (507: {said})"
    return f"answered {status}: {said}"


def _in_thread(function: Callable[..., None], *args: Any) -> Future[None]:
    """Run `function` on a thread of its own: a stuck peer must not delay pushes to the others, now or later."""
    future: Future[None] = Future()

    def run() -> None:
        future.set_running_or_notify_cancel()
        try:
            function(*args)
            future.set_result(None)
        except BaseException as error:  # noqa: BLE001 - handed to whoever waits on the future
            future.set_exception(error)

    threading.Thread(target=run, name="notebookos-object-push", daemon=True).start()
    return future


def _log_failed_push(push: Future[None], peer: str, key: str) -> None:
    """Pushes that end after `put` has returned have no one to report to but the log."""
    error = push.exception()
    if error is not None:
        _log.info("object %s was not copied to %s: %s", key, peer, error)
