"""A process's connection to a store's server: every write, exactly once."""

from __future__ import annotations

import os
import secrets
import socket
import threading
import time

from slither import _net, _protocol, _wire
from slither.errors import StoreError


class Client:
    """One connection per process to a store's server; reconnects and retries
    with the same sequence number, so the server can answer a retry from its
    record instead of applying it twice."""

    RETRY_FOR = 15.0

    def __init__(self, entry):
        self.entry = entry
        self.pid = os.getpid()
        self.id = secrets.token_hex(8)
        self.seq = 0
        self.sock: socket.socket | None = None
        self.lock = threading.Lock()

    def request(self, op: tuple):
        with self.lock:
            self.seq += 1
            msg = (self.id, self.seq, op)
            deadline = time.monotonic() + self.RETRY_FOR
            delay = 0.005
            while True:
                try:
                    if self.sock is None:
                        self.sock = self._connect()
                    _wire.send(self.sock, msg)
                    reply = _wire.recv(self.sock)
                    break
                except (OSError, EOFError) as exc:
                    if self.sock is not None:
                        self.sock.close()
                        self.sock = None
                    if time.monotonic() > deadline:
                        raise StoreError(f"store {self.entry.name!r}: server unreachable for {self.RETRY_FOR}s ({exc})") from exc
                    time.sleep(delay)  # waiting for the supervisor to restart the server: no event reaches this process
                    delay = min(0.1, delay * 2)
        if reply[0] == _protocol.OK:
            return reply[1]
        _, code, message = reply
        if code == _protocol.MISSING_KEY:
            raise KeyError(message)
        raise StoreError(message)

    def _connect(self) -> socket.socket:
        if self.entry.remote is None:
            return _wire.connect(self.entry.sock, timeout=5)
        sock = _net.connect(self.entry.remote, _net.MEMBER.secret, timeout=5)
        sock.settimeout(None)
        return sock

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
            self.sock = None
