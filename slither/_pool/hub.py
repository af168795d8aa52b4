"""The hub: where this runtime's workers, pool supervisors and nannies connect.

A Unix socket in the runtime's private (0700) directory; every first frame
must carry the runtime's token. A convention leader also listens on TCP for
the workers of its members, each proving first that it knows the
convention's secret (nothing is unpickled before). Greetings are listed in
``slither._protocol``.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
from collections.abc import Callable

from loguru import logger

from slither import _net, _protocol, _wire
from slither._pool.pool import Pool
from slither._pool.task import WorkerConn
from slither._sys import serve_forever
from slither.errors import WorkerError


class Hub:
    def __init__(self, path: str, token: str, store_paths: Callable[[], dict]):
        self.path = path
        self.token = token
        self.pools: dict[str, Pool] = {}
        self.store_paths = store_paths
        self.sock = _wire.listen(path)
        self.tcp: socket.socket | None = None
        self._secret = b""
        self._closed = False
        self._serve(self.sock, self._greet, "slither-hub")

    def _serve(self, listener, handle, name: str) -> None:
        args = (listener, handle, f"{name}-greet", lambda: self._closed)
        threading.Thread(target=serve_forever, args=args, name=name, daemon=True).start()

    def listen_tcp(self, host: str, port: int, secret: bytes) -> tuple[str, int]:
        """Also accept workers of convention members over TCP, each proving it knows ``secret``."""
        self.tcp = socket.create_server((host, port), backlog=128)
        self._secret = secret
        self._serve(self.tcp, self._greet_remote, "slither-hub-tcp")
        return self.tcp.getsockname()[:2]

    def _greet_remote(self, s: socket.socket, peer) -> None:
        _net.tune(s)
        if not _net.server_handshake(s, self._secret):  # before anything is unpickled
            logger.warning("slither hub: refused {}: it did not prove it knows the convention secret", peer)
            s.close()
            return
        self._greet(s, None, remote=True)

    def _greet(self, s: socket.socket, _peer=None, remote: bool = False) -> None:
        try:
            s.settimeout(10)
            hello = _wire.recv(s)
            s.settimeout(None)
            kind, token = hello[0], hello[1]
            if (not remote and token != self.token) or (remote and kind != _protocol.WORKER):
                s.close()  # only workers come over the network
                return
            pool = self.pools.get(hello[2])
            if kind == _protocol.RUNNER:
                self._serve_runner(s, pool, hello[2], hello[3])
                return
            if kind == _protocol.WORKER and pool is not None:
                _, _, name, index, pid = hello
                _wire.send(s, _protocol.init(list(sys.path), os.getcwd(), self.store_paths(), pool.worker_setup, pool.max_rss))
                s.settimeout(None)  # a setup may take long (a model to load)
                answer = _wire.recv(s)
                if answer == _protocol.READY:
                    pool.attach(WorkerConn(name, index, pid, s, remote=remote))
                else:  # ("setup_failed", type, message, traceback): the worker ends
                    pool.setup_failed(WorkerError(answer[1], answer[2], answer[3]))
                    s.close()
                return
            s.close()
            if pool is None:
                return
            if kind == _protocol.POOL_UP:
                with pool.lock:
                    pool.sup_pid = hello[3]
            elif kind == _protocol.EXIT:
                pool.exited(hello[4], hello[5], hello[6])
            elif kind == _protocol.POOL_DOWN:
                pool.mark_down()
        except (OSError, EOFError, ValueError, TypeError):
            try:
                s.close()
            except OSError:
                pass

    def _serve_runner(self, s: socket.socket, pool: Pool | None, name: str, path: str) -> None:
        """A DispatchRunner's registration, held until its EOF (see ``Pool.add_runner``)."""
        if pool is None:
            _wire.send(s, _protocol.joined(0, f"no pool named {name!r}; this runtime has {sorted(self.pools)}"))
            s.close()
            return
        pool.add_runner(path, s)
        try:
            while s.recv(4096):
                pass
        except OSError:
            pass
        finally:
            pool.remove_runner(path)
            s.close()

    def close(self) -> None:
        self._closed = True
        for listener in (self.sock, self.tcp):
            if listener is None:
                continue
            try:
                listener.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept() (close alone does not)
            except OSError:
                pass
            listener.close()
        try:
            os.unlink(self.path)
        except OSError:
            pass
