"""The peer API's body sealing on its own: sizes, chunking, and every way a sealed body must fail to open."""

from __future__ import annotations

import os

import pytest

from notebookos.replication.sealing import (
    CHUNK_SIZE,
    SealedBodyError,
    Sealer,
    answer_context,
    plaintext_size,
    request_context,
    sealed_size,
)

_CONTEXT = request_context("PUT", "/objects/sha256:" + "0" * 64, "1700000000")
_SIZES = [0, 1, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1, 3 * CHUNK_SIZE + 5]


@pytest.fixture(scope="module")
def sealer() -> Sealer:
    return Sealer("the kernel's raft password")


def _sealed(sealer: Sealer, data: bytes, context: bytes = _CONTEXT) -> bytes:
    return b"".join(bytes(piece) for piece in sealer.seal(memoryview(data), context))


def _open(sealer: Sealer, sealed: bytes, piece: int, context: bytes = _CONTEXT) -> bytes:
    """Open `sealed` fed in pieces of `piece` bytes; the stretches `feed` yields must add up to the plaintext."""
    opener = sealer.opener(context, len(sealed))
    stretches = bytearray()
    for start in range(0, len(sealed), piece):
        for stretch in opener.feed(sealed[start : start + piece]):
            stretches += stretch
    plaintext = bytes(opener.plaintext())
    assert stretches == plaintext
    return plaintext


@pytest.mark.parametrize("size", _SIZES)
def test_sizes_map_both_ways_and_bodies_round_trip_in_pieces_of_any_size(sealer, size):
    data = os.urandom(size)
    sealed = _sealed(sealer, data)
    assert len(sealed) == sealed_size(size) and plaintext_size(len(sealed)) == size
    small_pieces = [7] if size < 3000 else []  # feeding megabytes 7 bytes at a time would only be slow
    for piece in [1 << 16, len(sealed), *small_pieces]:
        assert _open(sealer, sealed, piece) == data


def test_sizes_no_sealing_produces_are_refused(sealer):
    for sealed in (0, 11, 12, 27, sealed_size(CHUNK_SIZE) + 5):
        with pytest.raises(SealedBodyError, match="not a sealed notebookos body"):
            sealer.opener(_CONTEXT, sealed)


def test_the_same_body_seals_differently_each_time(sealer):
    data = b"the same plaintext"
    assert _sealed(sealer, data) != _sealed(sealer, data)  # a fresh random nonce per body


def test_another_key_or_context_does_not_open(sealer):
    sealed = _sealed(sealer, b"secret state")
    with pytest.raises(SealedBodyError, match="another kernel's secret or for another request"):
        _open(Sealer("another kernel's password"), sealed, len(sealed))
    for other in (
        request_context("PUT", "/objects/sha256:" + "1" * 64, "1700000000"),
        request_context("GET", "/objects/sha256:" + "0" * 64, "1700000000"),
        request_context("PUT", "/objects/sha256:" + "0" * 64, "1700000001"),
        answer_context("PUT", "/objects/sha256:" + "0" * 64, "1700000000"),
    ):
        with pytest.raises(SealedBodyError):
            _open(sealer, sealed, len(sealed), other)


def test_a_changed_byte_anywhere_does_not_open(sealer):
    sealed = _sealed(sealer, os.urandom(2 * CHUNK_SIZE + 10))
    for where in (0, 11, 12, CHUNK_SIZE, len(sealed) - 1):  # the nonce, a ciphertext, the last tag
        changed = bytearray(sealed)
        changed[where] ^= 0x80
        with pytest.raises(SealedBodyError, match="does not open"):
            _open(sealer, bytes(changed), 1 << 16)


def test_chunks_cannot_be_swapped_dropped_or_cut(sealer):
    sealed = _sealed(sealer, os.urandom(2 * CHUNK_SIZE))
    first, second = sealed[12 : 12 + CHUNK_SIZE + 16], sealed[12 + CHUNK_SIZE + 16 :]
    with pytest.raises(SealedBodyError, match="chunk 0"):
        _open(sealer, sealed[:12] + second + first, 1 << 16)
    with pytest.raises(SealedBodyError, match="chunk 0"):  # cut at a chunk boundary: the first is not the last
        _open(sealer, sealed[:12] + first, 1 << 16)
    opener = sealer.opener(_CONTEXT, len(sealed))
    for _ in opener.feed(sealed[:-1]):
        pass
    with pytest.raises(SealedBodyError, match="cut short"):
        opener.plaintext()
    with pytest.raises(SealedBodyError, match="past its announced"):
        for _ in opener.feed(sealed[-1:] + b"more"):
            pass


def test_a_body_from_another_body_does_not_open(sealer):
    """Chunks are tied to their body by its random nonce: two bodies for one context cannot be spliced."""
    one, two = _sealed(sealer, os.urandom(2 * CHUNK_SIZE)), _sealed(sealer, os.urandom(2 * CHUNK_SIZE))
    spliced = one[: 12 + CHUNK_SIZE + 16] + two[12 + CHUNK_SIZE + 16 :]
    with pytest.raises(SealedBodyError, match="chunk 1"):
        _open(sealer, spliced, 1 << 16)


def test_an_empty_password_is_refused():
    with pytest.raises(ValueError, match="Raft password"):
        Sealer("")
