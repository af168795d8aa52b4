"""Runtimes that span hosts, on Thespian conventions.

A *leader* is a :class:`~slither.Runtime` made with ``convention=Convention(...)``:
its Thespian admin listens on the address you choose, and so does a TCP
listener for the data plane. A *member* is ``slither node --join HOST:PORT``
on another host: a Thespian actor system that joins the leader's convention
and advertises its capabilities. A pool with ``PoolSpec(where={...})`` has
its workers created on a member whose capabilities match (Thespian's
placement); those workers connect back to the leader's data-plane listener
and serve batches exactly as local ones do.

Trust model (also in docs/cluster.md):

* Data plane: every TCP connection starts with a mutual HMAC-SHA256
  challenge on a shared secret (:func:`server_handshake`,
  :func:`client_handshake`). Nothing is unpickled on either side before it
  succeeds. After it, frames are pickles in the clear: use a private network
  or a tunnel.
* Control plane: Thespian's own TCP transport unpickles what reaches its
  ports; every Thespian message is signed (HMAC-SHA256 under the secret, see
  ``slither._thespian``) and an unsigned one is dropped before unpickling.
  Signed, not encrypted: still use a private network.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import threading
import time

import attrs
from thespian.actors import Actor, ActorExitRequest, ActorSystem, ActorSystemConventionUpdate

from slither import _thespian
from slither._actors import RootSupervisor, WatchCaller
from slither._net import MEMBER, MIN_SECRET, client_handshake, connect, parse_address, server_handshake
from slither._store.replica import ReplicaService
from slither.errors import ConfigurationError
from slither.supervision import INCARNATION


def _as_secret(value) -> bytes:
    if isinstance(value, str):
        value = value.encode()
    if not isinstance(value, bytes) or len(value) < MIN_SECRET:
        raise ConfigurationError(
            f"convention secret: need at least {MIN_SECRET} bytes (there is no default secret); "
            f"make one with: python -c 'import secrets; print(secrets.token_hex(32))'"
        )
    return value


@attrs.frozen(repr=False)
class Convention:
    """Makes a Runtime the leader of a convention, or (``join=True``) a member of one.

    Args:
        address: ``"HOST:PORT"`` where the leader's Thespian admin listens and
            members join. Choose an address only your hosts can reach.
        secret: shared with every member (bytes or str, at least 16 bytes).
        data_port: the leader's data-plane TCP port on the same host (0: a
            free one; members learn it from the leader).
        capabilities: what this runtime offers to the leader's
            ``PoolSpec(where=...)``.
        join: this runtime joins the convention led at ``address`` instead
            of leading it, like ``slither node``: the leader may place
            workers on it, and its own pools and stores stay local.
        name: a joining runtime's ``node`` capability (default
            ``HOSTNAME:ADMINPORT``).
        listen: the address a joining runtime listens on (default: the one
            it uses to reach the leader).
    """

    address: str
    secret: bytes = attrs.field(converter=_as_secret)
    data_port: int = 0
    capabilities: dict = attrs.field(factory=dict)
    join: bool = False
    name: str | None = None
    listen: str | None = None

    def __attrs_post_init__(self):
        parse_address(self.address, "Convention.address")

    @property
    def host(self) -> str:
        return parse_address(self.address, "Convention.address")[0]

    @property
    def port(self) -> int:
        return parse_address(self.address, "Convention.address")[1]

    def __repr__(self) -> str:  # never print the secret
        role = ", join=True" if self.join else ""
        return f"Convention(address={self.address!r}, data_port={self.data_port}, capabilities={self.capabilities!r}{role})"


def _member_setup(join: str, secret: bytes, capabilities, name, admin_port: int, host: str | None, replica_dir: str | None):
    """Prepare this process to run a member's actor system: (admin port, capabilities, replica service).

    Everything here is inherited by the actor processes Thespian forks from
    this one: the bind address, the key that signs Thespian messages, the
    data-plane secret of the workers the leader places here and the socket
    of the store replica service (start it once the actor system exists)."""
    lhost, lport = parse_address(join, "join")
    MEMBER.secret = secret
    if host is None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect((lhost, lport))
            host = probe.getsockname()[0]
    _thespian.bind_to(host)
    _thespian.add_key(secret)  # Thespian messages between hosts are signed with it
    if not admin_port:
        with socket.socket() as s:
            s.bind((host, 0))
            admin_port = s.getsockname()[1]
    caps = {str(k): str(v) for k, v in (capabilities or {}).items()}
    caps["node"] = name or f"{socket.gethostname()}:{admin_port}"
    caps["slither_member"] = "1"
    caps[INCARNATION] = secrets.token_hex(8)  # this start of the member: the leader places on it, not on a dead one
    caps["Convention Address.IPv4"] = f"{lhost}:{lport}"
    replicas = ReplicaService(secret, base=replica_dir)
    MEMBER.replica_sock = replicas.sock_path
    return admin_port, caps, replicas


def await_leader(asys, join: str, timeout: float | None, stop: threading.Event | None = None, waiting=None) -> None:
    """Return once the leader at ``join`` has accepted the member ``asys``.

    Raises:
        NotAccepted: not within ``timeout`` seconds (None: wait until ``stop``).
    """
    watch = asys.createActor(_LeaderWatch)
    try:
        asys.tell(watch, "watch")
        t0 = time.monotonic()
        last_warning = t0
        while stop is None or not stop.is_set():  # until the leader registers back with this member
            reply = asys.listen(0.5)  # sliced: signal handlers run between waits
            if isinstance(reply, tuple) and reply[:1] == ("accepted",):
                return
            now = time.monotonic()
            if timeout is not None and now - t0 > timeout:
                raise NotAccepted(
                    f"the leader at {join} did not accept this member within {timeout:g}s "
                    "(is it running, reachable, and using the same secret?)"
                )
            if waiting is not None and now - last_warning >= 10:
                last_warning = now
                waiting(now - t0)
    finally:
        asys.tell(watch, ActorExitRequest())


class NotAccepted(ConnectionError):
    """The leader did not accept this member in time (down, unreachable, or another secret)."""


class _LeaderWatch(Actor):
    """On a member: tells whoever asked once the convention leader has accepted this system."""

    _asker = None

    def receiveMessage(self, message, sender):
        if message == "watch":
            self._asker = sender
            self.notifyOnSystemRegistrationChanges(True)
        elif isinstance(message, ActorSystemConventionUpdate) and message.remoteAdded and self._asker is not None:
            self.send(self._asker, ("accepted", str(message.remoteAdminAddress)))


def run_node(
    join: str,
    secret: bytes | str,
    capabilities: dict | None = None,
    *,
    name: str | None = None,
    admin_port: int = 0,
    host: str | None = None,
    network_only: bool = False,
    ready=None,
    join_timeout: float | None = None,
    waiting=None,
    replica_dir: str | None = None,
) -> None:
    """Run a member: join the leader's convention at ``join`` and serve until SIGTERM/SIGINT.

    Args:
        join: the leader's ``"HOST:PORT"`` (its ``Convention.address``).
        secret: the convention's shared secret.
        capabilities: offered to ``PoolSpec(where=...)``; ``node`` is added
            (``name``, default the host name and admin port).
        admin_port: this member's Thespian admin port (0: a free one).
        host: the address this member listens on (default: the one it uses
            to reach the leader).
        network_only: workers here use the network path even when the
            leader shares the machine (tests and benchmarks).
        ready: called with the member's capabilities once the leader has
            accepted it (Thespian's messages are signed with the secret: a
            leader with another secret never does).
        join_timeout: raise :class:`NotAccepted` if the leader has not
            accepted this member within that many seconds (None: wait).
        waiting: called every 10 s while the leader has not accepted it yet.
        replica_dir: where this member keeps its store replicas (a private
            directory is made inside it and removed on exit; default
            ``/dev/shm``, else the system's temporary directory).

    Raises:
        NotAccepted: ``join_timeout`` passed without the leader accepting.
    """
    MEMBER.force_network = network_only
    secret = _as_secret(secret)
    admin_port, caps, replicas = _member_setup(join, secret, capabilities, name, admin_port, host, replica_dir)
    _thespian.sign_everything()  # a member process is wholly Slither's
    asys = ActorSystem(
        "multiprocTCPBase", {"Admin Port": admin_port, **caps}, logDefs=_thespian.QUIET_LOGDEFS, transientUnique=True
    )
    # Thespian's admin detaches from this process: a watchdog actor kills the
    # member's actors if this process dies without shutting them down.
    watchdog = asys.createActor(RootSupervisor)
    asys.tell(watchdog, WatchCaller(os.getpid(), os.getpgid(0), replicas.dir))
    replicas.start()  # threads only after Thespian forked its admin from this process
    try:
        _serve_until_stopped(asys, join, join_timeout, ready, caps, waiting)
    finally:
        try:
            asys.shutdown()  # the actor processes here die with it (they are linked to their parents)
        finally:
            replicas.close()


def _serve_until_stopped(asys, join: str, join_timeout, ready, caps: dict, waiting) -> None:
    """Wait to be accepted by the leader, tell ``ready``, then serve until SIGTERM/SIGINT."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    await_leader(asys, join, join_timeout, stop, waiting)
    if ready is not None and not stop.is_set():
        ready(caps)
    while not stop.wait(0.5):  # sliced: signal handlers run between waits
        pass


__all__ = ["Convention", "NotAccepted", "run_node", "connect", "server_handshake", "client_handshake"]
