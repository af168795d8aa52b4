"""The network between hosts: TCP options, the data plane's mutual HMAC handshake,
authenticated connections, and the environment of a convention member's process.

Every TCP connection between hosts starts with a mutual HMAC-SHA256
challenge on the convention's shared secret (:func:`server_handshake`,
:func:`client_handshake`); nothing is unpickled on either side before it
succeeds. After it, frames are pickles in the clear (see docs/cluster.md).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import socket

import attrs

from slither import _wire
from slither.errors import ConfigurationError

_MAGIC = b"SLTH1"
_NONCE = 32
_MAC = 32
MIN_SECRET = 16


@attrs.define
class MemberEnvironment:
    """What a convention member's process knows, set before its actor system starts
    (the actor processes Thespian forks from it inherit it)."""

    secret: bytes | None = None  # the convention's: workers placed here connect to the leader with it
    force_network: bool = False  # workers take the network path even beside the leader (tests, benchmarks)
    replica_sock: str | None = None  # the node's store replica service (slither._store.replication)


MEMBER = MemberEnvironment()


def parse_address(value: str, what: str) -> tuple[str, int]:
    host, sep, port = str(value).rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigurationError(f"{what}: expected 'HOST:PORT', got {value!r}")
    return host, int(port)


# A peer whose host died or whose network was cut sends no FIN: without these
# a connection to it looks alive forever (an idle worker would never exit, a
# batch sent to it would wait for its timeout, or for ever without one).
KEEPALIVE_IDLE = 5  # s of silence before the first probe
KEEPALIVE_INTERVAL = 2
KEEPALIVE_PROBES = 3  # unanswered probes: the connection is dead (about 11 s)
USER_TIMEOUT_MS = 15000  # data sent and not acknowledged for this long: dead


def tune(sock: socket.socket) -> None:
    """Options of every TCP connection between hosts: no Nagle delay, dead peers detected."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (
        ("TCP_KEEPIDLE", KEEPALIVE_IDLE),
        ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL),
        ("TCP_KEEPCNT", KEEPALIVE_PROBES),
        ("TCP_USER_TIMEOUT", USER_TIMEOUT_MS),
    ):
        opt = getattr(socket, name, None)
        if opt is not None:  # Linux; elsewhere the system's keepalive defaults apply
            sock.setsockopt(socket.IPPROTO_TCP, opt, value)


def _mac(secret: bytes, *parts: bytes) -> bytes:
    return hmac.new(secret, b"".join(parts), hashlib.sha256).digest()


def _guarded(sock: socket.socket, timeout: float, step) -> bool:
    """Run one side of the handshake with a deadline; any I/O failure is a refusal."""
    sock.settimeout(timeout)
    try:
        return step()
    except (OSError, EOFError):
        return False
    finally:
        try:
            sock.settimeout(None)
        except OSError:
            pass


def server_handshake(sock: socket.socket, secret: bytes, timeout: float = 10.0) -> bool:
    """The listening side. True when the peer proved it knows ``secret``."""

    def step() -> bool:
        mine = secrets.token_bytes(_NONCE)
        sock.sendall(_MAGIC + mine)
        got = _wire._recv_exact(sock, _NONCE + _MAC)
        theirs, mac = got[:_NONCE], got[_NONCE:]
        if not hmac.compare_digest(mac, _mac(secret, b"client", mine, theirs)):
            return False
        sock.sendall(_mac(secret, b"server", theirs, mine))
        return True

    return _guarded(sock, timeout, step)


def client_handshake(sock: socket.socket, secret: bytes, timeout: float = 10.0) -> bool:
    """The connecting side. True when the listener proved it knows ``secret``."""

    def step() -> bool:
        head = _wire._recv_exact(sock, len(_MAGIC) + _NONCE)
        if head[: len(_MAGIC)] != _MAGIC:
            return False
        theirs = head[len(_MAGIC) :]
        mine = secrets.token_bytes(_NONCE)
        sock.sendall(mine + _mac(secret, b"client", theirs, mine))
        return hmac.compare_digest(_wire._recv_exact(sock, _MAC), _mac(secret, b"server", mine, theirs))

    return _guarded(sock, timeout, step)


def connect(address: tuple[str, int], secret: bytes | None, timeout: float = 10.0) -> socket.socket:
    """An authenticated data-plane connection to a leader."""
    if secret is None:
        raise ConnectionRefusedError("this process has no convention secret (is it a member started by `slither node`?)")
    s = socket.create_connection(address, timeout=timeout)
    tune(s)
    if not client_handshake(s, secret, timeout):
        s.close()
        raise ConnectionRefusedError(f"the leader at {address[0]}:{address[1]} did not prove it knows the secret")
    return s
