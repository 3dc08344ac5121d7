"""A TCP relay for tests of the peer API: what an eavesdropper (or an attacker) on the path between replicas has.

It forwards each connection to a target, records every byte in each direction, and can flip one byte of what the
server sends, as a man in the middle would.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable


class Relay:
    """Listens on 127.0.0.1; forwards to `target_port` there. `sent` holds what clients sent, `answered` what the
    server answered (over all connections). With `flip_answer_at`, the byte at that offset of each connection's
    answer is inverted on its way to the client."""

    def __init__(self, target_port: int, flip_answer_at: int | None = None) -> None:
        self.sent = bytearray()
        self.answered = bytearray()
        self._target_port = target_port
        self._flip_answer_at = flip_answer_at
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        _start(self._accept)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._listener.getsockname()[1]}"

    def close(self) -> None:
        """Accept no more connections; those open end when either side closes them."""
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            server = socket.create_connection(("127.0.0.1", self._target_port))
            _start(self._pump, client, server, self.sent, None)
            _start(self._pump, server, client, self.answered, self._flip_answer_at)

    def _pump(self, source: socket.socket, sink: socket.socket, record: bytearray, flip_at: int | None) -> None:
        offset = 0
        with source:
            while True:
                try:
                    data = bytearray(source.recv(1 << 16))
                except OSError:
                    data = bytearray()
                if flip_at is not None and offset <= flip_at < offset + len(data):
                    data[flip_at - offset] ^= 0xFF
                offset += len(data)
                with self._lock:
                    record += data
                try:
                    if not data:
                        sink.shutdown(socket.SHUT_WR)
                        return
                    sink.sendall(data)
                except OSError:
                    return


def _start(target: Callable[..., None], *args: object) -> None:
    threading.Thread(target=target, args=args, daemon=True).start()
