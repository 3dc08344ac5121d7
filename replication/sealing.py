"""Confidentiality for the bodies of the kernel's peer API (objects and membership): AES-256-GCM, sealed in chunks.

Why. The peer API's requests are signed with the kernel's Raft password (see peer_store), so nobody without it
can read or write a kernel's objects; but the bodies themselves (the pickled namespace, tensors included, and the
membership requests) crossed the network in clear, for anyone on the path to read. Every body the peer API sends
is now sealed by this module, on the client and the server alike: the objects a replica pushes (PUT) and the
answers to fetches (GET), the membership requests and their answers.

Why this scheme, and not TLS. The replicas already share a high-entropy secret, the Raft password, and nothing
else: no certificates, which TLS would need every replica to make, announce and pin (Python's ssl has no
pre-shared-key mode before 3.13). The payloads are large (a changed 100 MB tensor must reach both standbys within
a second), so the cost per byte decides: AES-256-GCM runs at several GB/s with AES-NI and VAES, streams, and
`cryptography` (already installed for pysyncobj's Raft encryption) writes its output into buffers we choose
(`encrypt_into`/`decrypt_into`, cryptography >= 47): a body is encrypted chunk by chunk into one reused buffer on
its way to the socket, and decrypted as it arrives straight into the buffer that receives the object, in place of
the copy that buffer took in clear. pysyncobj's own Fernet (AES-128-CBC, HMAC, base64) is a third larger on the
wire, whole-message and slower.

The scheme:

- Key: HKDF-SHA256 of the Raft password, with an `info` string of its own, to a 256-bit AES-GCM key. The password
  is 24 random bytes, so no slow password hashing is needed; the distinct `info` keeps this key apart from the
  Raft key (pysyncobj's PBKDF2 of the same password) and from the requests' HMAC signatures.
- Sealed body: a random 96-bit base nonce, then the plaintext in chunks of CHUNK_SIZE bytes (the last one shorter,
  and an empty body one empty chunk), each encrypted and followed by its 16-byte GCM tag. Chunk i's nonce is the
  base nonce XOR i, so chunks cannot be reordered or moved into another body; the associated data of each chunk
  is the context (below) and a flag marking the last chunk, so a body cannot be cut short at a chunk boundary.
  The sealed size follows from the plaintext's (`sealed_size`) and back (`plaintext_size`), so a receiver
  allocates the plaintext once, at its final size, from the Content-Length.
- Context: the direction (request or answer), the request's method, path and signed timestamp. A sealed body
  opens only as the body of the very request it was made for, or as the answer to it: it cannot be replayed onto
  another object's key, another method, or later than the signature it travels with.
- A body that does not open (another key, or a byte changed on the way) raises SealedBodyError: it is never
  stored, unpickled or parsed, and the partly opened plaintext is dropped.

GCM's bound of 2**32 random nonces per key allows 4 PiB of 1 MiB chunks per kernel. What stays visible on the
wire: the request line (so the object key, the SHA-256 of the plaintext, which lets an eavesdropper confirm a
guess of an object's exact content), status codes and error explanations, and the sizes and timing of bodies.
The stores keep plaintext at rest; encryption at rest is not this module's business.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = [
    "CHUNK_SIZE",
    "SEALED_CONTENT_TYPE",
    "Opener",
    "SealedBodyError",
    "Sealer",
    "answer_context",
    "plaintext_size",
    "request_context",
    "sealed_size",
]

CHUNK_SIZE = 1 << 20  # plaintext per GCM message: large enough that per-call overhead vanishes, small for buffers
SEALED_CONTENT_TYPE = "application/x-notebookos-sealed"
_NONCE_SIZE = 12
_TAG_SIZE = 16
_SEALED_CHUNK_SIZE = CHUNK_SIZE + _TAG_SIZE
_KEY_INFO = b"notebookos peer API v1: AES-256-GCM key for request and answer bodies"
_CONTEXT_LABEL = "notebookos-peer-body-v1"
_MIDDLE, _LAST = b"\x00", b"\x01"


class SealedBodyError(ValueError):
    """A sealed body did not open: it was sealed under another key or for another request, changed on the way,
    or cut short. The message says which; the receiver must drop whatever of the body it holds."""


def request_context(method: str, path: str, timestamp: str) -> bytes:
    """What a request's body is bound to: its method, path and signed timestamp (peer_store.TIME_HEADER)."""
    return "\n".join((_CONTEXT_LABEL, "request", method, path, timestamp)).encode()


def answer_context(method: str, path: str, timestamp: str) -> bytes:
    """What the answer to that request is bound to: the same, marked as an answer so a request body (or a
    captured one) cannot pass for it."""
    return "\n".join((_CONTEXT_LABEL, "answer", method, path, timestamp)).encode()


def _chunks_of(size: int) -> int:
    """How many chunks a plaintext of `size` bytes is sealed in (an empty one still has its tag)."""
    return max(1, -(-size // CHUNK_SIZE))


def sealed_size(size: int) -> int:
    """The size on the wire of a plaintext of `size` bytes, sealed."""
    return _NONCE_SIZE + size + _TAG_SIZE * _chunks_of(size)


def plaintext_size(sealed: int) -> int:
    """The plaintext's size for a sealed body of `sealed` bytes; SealedBodyError when no plaintext seals to it."""
    rest = sealed - _NONCE_SIZE
    size = rest - _TAG_SIZE * max(1, -(-rest // _SEALED_CHUNK_SIZE))
    if size < 0 or sealed_size(size) != sealed:
        raise SealedBodyError(f"a sealed body cannot be {sealed} bytes long: it is not a sealed notebookos body")
    return size


class Sealer:
    """The body key of one kernel's peer API, derived from its Raft password (see the module docstring).

    One instance serves any number of threads: each call encrypts or decrypts under a context of its own.
    """

    def __init__(self, secret: str) -> None:
        if not isinstance(secret, str) or not secret:
            raise ValueError("the peer API's key is derived from the kernel's Raft password: pass a non-empty one")
        key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_KEY_INFO).derive(secret.encode())
        self._aead = AESGCM(key)

    def __repr__(self) -> str:
        return "Sealer(<key hidden>)"

    def seal(self, data: memoryview, context: bytes) -> Iterator[memoryview]:
        """`data` sealed for `context`, in pieces to send one after the other (sealed_size(len) bytes in all).

        Each piece is a view of one buffer that the next piece overwrites: send it before asking for the next.
        """
        data = data.cast("B")
        base = os.urandom(_NONCE_SIZE)
        yield memoryview(base)
        buffer = memoryview(bytearray(min(data.nbytes, CHUNK_SIZE) + _TAG_SIZE))
        start = 0
        for index in range(_chunks_of(data.nbytes)):
            chunk = data[start : start + CHUNK_SIZE]
            start += chunk.nbytes
            flag = _LAST if start == data.nbytes else _MIDDLE
            sealed = buffer[: chunk.nbytes + _TAG_SIZE]
            self._aead.encrypt_into(_nonce(base, index), chunk, context + flag, sealed)
            yield sealed

    def seal_bytes(self, data: bytes, context: bytes) -> bytes:
        """A small body (a membership request or answer) sealed in one piece."""
        return b"".join(self.seal(memoryview(data), context))

    def opener(self, context: bytes, sealed: int) -> Opener:
        """An Opener for a body of `sealed` bytes sealed for `context`; SealedBodyError if no body has that size."""
        return Opener(self._aead, context, sealed)

    def open_bytes(self, sealed: bytes, context: bytes) -> bytes:
        """A small sealed body (membership), opened whole."""
        opener = self.opener(context, len(sealed))
        for _ in opener.feed(sealed):
            pass
        return bytes(opener.plaintext())


class Opener:
    """Opens one sealed body as its bytes arrive, in pieces of any size, into a buffer of the plaintext's size.

    `feed` yields each newly opened stretch of the plaintext (to hash it while it is in cache); `plaintext()` is
    the whole once every byte has arrived. A chunk that arrives whole in one piece is decrypted from that piece;
    others are gathered in a buffer of one sealed chunk first.
    """

    def __init__(self, aead: AESGCM, context: bytes, sealed: int) -> None:
        self.size = plaintext_size(sealed)
        self._aead = aead
        self._context = context
        self._plaintext = bytearray(self.size)
        self._output = memoryview(self._plaintext)
        self._base: bytes | None = None
        self._index = 0
        self._opened = 0  # plaintext bytes opened so far
        self._gathered = memoryview(bytearray(min(self.size, CHUNK_SIZE) + _TAG_SIZE))
        self._have = 0  # bytes of the unit in progress (base nonce or sealed chunk) gathered so far
        self._chunks = _chunks_of(self.size)

    @property
    def complete(self) -> bool:
        """Whether every chunk has arrived and opened."""
        return self._index == self._chunks

    @property
    def wanted(self) -> int:
        """How many more bytes complete the unit in progress: a reader that reads exactly this many at a time
        never has them gathered (copied) before decryption."""
        return self._unit_size() - self._have

    def feed(self, data: bytes | bytearray | memoryview) -> Iterator[memoryview]:
        """Take the next bytes of the sealed body; yield each stretch of plaintext they complete.

        Raises SealedBodyError at the first chunk that does not open, or on bytes past the body's end.
        """
        view = memoryview(data).cast("B")
        while view.nbytes:
            if self.complete:
                raise SealedBodyError(f"the sealed body goes on past its announced {sealed_size(self.size)} bytes")
            need = self._unit_size()
            if self._have == 0 and view.nbytes >= need:
                unit, view = view[:need], view[need:]
            else:
                take = min(need - self._have, view.nbytes)
                self._gathered[self._have : self._have + take] = view[:take]
                self._have += take
                view = view[take:]
                if self._have < need:
                    return
                unit, self._have = self._gathered[:need], 0
            if self._base is None:
                self._base = bytes(unit)
            else:
                yield self._open(unit)

    def plaintext(self) -> bytearray:
        """The whole plaintext; SealedBodyError if the body has not all arrived."""
        if not self.complete:
            raise SealedBodyError(
                f"the sealed body ended after {self._opened} of its {self.size} plaintext bytes: it was cut short"
            )
        return self._plaintext

    def _unit_size(self) -> int:
        if self._base is None:
            return _NONCE_SIZE
        return min(CHUNK_SIZE, self.size - self._opened) + _TAG_SIZE

    def _open(self, unit: memoryview) -> memoryview:
        assert self._base is not None
        start, end = self._opened, self._opened + unit.nbytes - _TAG_SIZE
        flag = _LAST if end == self.size else _MIDDLE
        target = self._output[start:end]
        try:
            self._aead.decrypt_into(_nonce(self._base, self._index), unit, self._context + flag, target)
        except InvalidTag:
            raise SealedBodyError(
                f"chunk {self._index} of the sealed body does not open: it was sealed under another kernel's "
                "secret or for another request, or it was changed on the way"
            ) from None
        self._index += 1
        self._opened = end
        return target


def _nonce(base: bytes, index: int) -> bytes:
    """Chunk `index`'s nonce: distinct for every chunk of a body, and tied to that body's random base."""
    return (int.from_bytes(base, "big") ^ index).to_bytes(_NONCE_SIZE, "big")
