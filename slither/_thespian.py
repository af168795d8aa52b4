"""What we change about Thespian, in one place.

Thespian's TCP transport binds every listening socket to all interfaces
(``IPActorAddress.bindname = ('', port)``) and unpickles whatever arrives.
A single-host runtime must accept connections from this machine only, so
while :data:`LOOPBACK_ONLY` is set every Thespian listener of this process
(and of the actor processes it forks, which inherit this patched class) binds
to 127.0.0.1. ``tests/test_security.py`` checks every listening socket the
runtime's processes own.

Also here: every Thespian message *of Slither's own systems* is signed and
an unsigned one is dropped before it is unpickled (see :func:`creating`), the convention check-in periods are
shortened so that a dead member is noticed in seconds, not minutes, a
child's exit is never dropped unreported, the caller's logging tree is kept
for the workers (Thespian replaces it in every actor process), and a filter
on the root logger keeps Thespian's own log lines from the caller's handlers.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import hmac
import inspect
import logging
import os
import pickle
import secrets
import threading
from datetime import timedelta

import thespian as _thespian_pkg
from thespian.system.admin import convention as _convention
from thespian.system.transport import IPBase
from thespian.system.transport import TCPTransport as _tcp
from thespian.system.transport import streamBuffer as _stream

LOOPBACK = "127.0.0.1"

# The caller's logging tree, as objects: Thespian replaces ``logging.root`` and the
# manager in every actor process it starts; a worker (see slither._worker) puts these
# back, and so has the caller's loggers and levels as they were when the runtime started.
CALLER_LOGGING = (logging.root, logging.Logger.manager)


class _NotThespians(logging.Filter):
    """Drops the records Thespian's own modules log on the root logger. Its admin
    process, forked from the caller, logs lines such as "++++ Actor System gen ...
    started" with ``logging.info``, through the caller's own root handlers."""

    _where = os.path.dirname(_thespian_pkg.__file__) + os.sep

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.pathname.startswith(self._where)


if not any(isinstance(f, _NotThespians) for f in logging.root.filters):
    logging.root.addFilter(_NotThespians())

# Thespian advertises THESPIAN_BASE_IPADDR (otherwise it probes for an
# external address). Bound to loopback, it must also advertise loopback, or no
# actor can reach another. A user who sets their own address (a multi-host
# convention) opted out of loopback-only binding.
os.environ.setdefault("THESPIAN_BASE_IPADDR", LOOPBACK)
LOOPBACK_ONLY = os.environ["THESPIAN_BASE_IPADDR"].startswith("127.")

# Silence Thespian: its logging config is applied with dictConfig in its
# logger process. logDefs=False makes every actor of a multi-process base fail
# (an AttributeError in get_min_log_level, then createActor hangs 50 s).
QUIET_LOGDEFS = {"version": 1, "disable_existing_loggers": False, "root": {"level": "CRITICAL", "handlers": []}}

_orig_bind_args = IPBase.IPActorAddress.bindArgs


_BIND: str | None = None  # set by bind_to(): a convention's chosen address


def _bind_args(self):
    args = _orig_bind_args.fget(self)
    host = _BIND or (LOOPBACK if LOOPBACK_ONLY else None)
    if host and args and isinstance(args[0], tuple) and args[0][0] in ("", "0.0.0.0"):
        return ((host, args[0][1]),)
    return args


def bind_to(host: str) -> None:
    """Make every Thespian listener of this process (and of the actor processes
    it forks) bind to, and advertise, ``host``: a convention's chosen address."""
    global _BIND
    _BIND = host
    os.environ["THESPIAN_BASE_IPADDR"] = host
    IPBase.thisSystem.add_local_addr(host)


if not getattr(IPBase.IPActorAddress, "_slither_patched", False):
    IPBase.IPActorAddress.bindArgs = property(_bind_args)
    IPBase.IPActorAddress._slither_patched = True


# Convention members re-register with their leader every period, and the
# leader drops one that missed three (its actors are then restarted elsewhere).
# Thespian's default period is 7 min 22 s, so a dead member would hold its
# workers' places for 22 minutes: 2 s here (a message a member every 2 s),
# unless CONVENTION_REREGISTRATION_PERIOD ("M:S") says otherwise. Every
# process of a convention must agree: slither's all import this module.
# The restart period must shrink with it: a member's admin first sleeps
# that long (3 min 22 s by default) before its first re-registration, and a
# leader on a 2 s period would drop it long before.
MEMBER_CHECKIN = timedelta(seconds=2)
if "CONVENTION_REREGISTRATION_PERIOD" not in os.environ:
    _convention.CONVENTION_REREGISTRATION_PERIOD = MEMBER_CHECKIN
if "CONVENTION_RESTART_PERIOD" not in os.environ:
    _convention.CONVENTION_RESTART_PERIOD = min(
        _convention.CONVENTION_RESTART_PERIOD, _convention.CONVENTION_REREGISTRATION_PERIOD
    )


# -- a child's exit is always reported ---------------------------------------------------
#
# When an actor handles one child's exit, Thespian's MultiProcReplicator._childExited
# drops *every* child process it finds dead from its list, including one that died
# a moment ago and whose SIGCHLD is still pending. When that SIGCHLD is handled the
# child is no longer listed, so its ChildActorExited never comes: the parent keeps
# it among its children for good, and at shutdown waits for it forever (workers
# SIGKILLed in quick succession leave such ghosts). Here handling one exit reports
# every dead child, as the SIGCHLD path does; a duplicate report is harmless
# (Thespian removes an address once; our supervisors match reports by address).
from thespian.system import multiprocCommon as _mpc  # noqa: E402


def _child_exited(self, child_addr) -> None:
    self.childDied()


_replicator = getattr(_mpc, "MultiProcReplicator", None)
if (  # a Thespian without these internals is left as it is (tests/test_supervision.py checks this one)
    _replicator is not None
    and callable(getattr(_replicator, "childDied", None))
    and callable(getattr(_replicator, "_childExited", None))
    and not getattr(_replicator, "_slither_patched", False)
):
    _replicator._childExited = _child_exited
    _replicator._slither_patched = True


# -- Thespian's own messages are signed ------------------------------------------------
#
# Thespian's TCP transport unpickles whatever reaches an admin or actor port:
# anyone who can connect could run code in our processes. Every message is
# now sent as [n][n HMAC-SHA256 tags][pickle] and unpickled only when a tag
# verifies under one of this process's keys: a random key made at import
# (inherited by every actor process forked from here: it closes loopback
# ports to other local users) and each convention secret this process uses
# (``add_key``: shared with the members on other hosts). Thespian's two
# fixed acknowledgement packets are the only unsigned input accepted, by
# exact bytes. Refused input never reaches pickle; Thespian logs it as
# a corrupt packet and drops the connection.

# SLITHER_SECRET lets processes that share it (an app's own, a convention's members)
# exchange messages with each other's Slither systems; without it the key is this
# process's own, inherited by the actor processes it forks.
_KEYS: list[bytes] = [os.environ["SLITHER_SECRET"].encode() if os.environ.get("SLITHER_SECRET") else secrets.token_bytes(32)]
_TAG = 32
_ACKS = {pickle.dumps(_stream.ackPacket): _stream.ackPacket, pickle.dumps(_stream.ackDataErrPacket): _stream.ackDataErrPacket}


class Refused:
    """What an unsigned or wrongly signed Thespian packet becomes instead of being unpickled."""

    __slots__ = ()


class _Signed:
    @staticmethod
    def dumps(obj) -> bytes:
        body = pickle.dumps(obj)
        return bytes([len(_KEYS)]) + b"".join(hmac.new(k, body, hashlib.sha256).digest() for k in _KEYS) + body

    @staticmethod
    def loads(data):
        data = bytes(data)
        ack = _ACKS.get(data)
        if ack is not None:
            return ack
        n = data[0] if data else 0
        start = 1 + n * _TAG
        if n == 0 or len(data) <= start:
            return Refused()
        body = memoryview(data)[start:]
        for key in _KEYS:
            want = hmac.new(key, body, hashlib.sha256).digest()
            if any(hmac.compare_digest(data[1 + i * _TAG : 1 + (i + 1) * _TAG], want) for i in range(n)):
                return pickle.loads(body)
        return Refused()


def add_key(secret: bytes) -> None:
    """Also sign with, and accept, ``secret`` (a convention's): before the actor system starts."""
    if secret not in _KEYS:
        _KEYS.append(secret)


# -- which transports sign -------------------------------------------------------------
#
# Thespian's TCP transport looks up the module global ``serializer`` at each use; here it is
# a router that signs and verifies for the transport whose method is running on this thread,
# when that transport is Slither's, and is plain pickle otherwise. A transport is Slither's
# when it was made while this thread was creating a Slither actor system, or in a process
# wholly Slither's: one forked from such a creation (its admin and actors, and their
# children), or a cluster member (:func:`sign_everything`). Systems the user makes, before
# or after ``import slither``, keep Thespian's own format and talk to any Thespian process.

_SIGN_ALL = False
_creating: tuple[int, int] | None = None  # (thread, pid) creating a Slither system now
_current = threading.local()
_CREATE_LOCK = threading.Lock()


def _in_slither_creation() -> bool:
    c = _creating
    return c is not None and (os.getpid() != c[1] or threading.get_ident() == c[0])


def _signs() -> bool:
    t = getattr(_current, "transport", None)
    if t is None:
        return _SIGN_ALL or _in_slither_creation()
    return getattr(t, "_slither_signed", False)


class _Router:
    @staticmethod
    def dumps(obj) -> bytes:
        return _Signed.dumps(obj) if _signs() else pickle.dumps(obj)

    @staticmethod
    def loads(data):
        return _Signed.loads(data) if _signs() else pickle.loads(data)


@contextlib.contextmanager
def creating():
    """Around the creation of a Slither actor system: its transports (and every process
    forked meanwhile) sign. One creation at a time."""
    global _creating
    with _CREATE_LOCK:
        _creating = (threading.get_ident(), os.getpid())
        try:
            yield
        finally:
            _creating = None


def sign_everything() -> None:
    """This whole process is Slither's (a cluster member): every transport signs."""
    global _SIGN_ALL
    _SIGN_ALL = True


def _scoped(fn):
    @functools.wraps(fn)
    def method(self, *args, **kwargs):
        prev = getattr(_current, "transport", None)
        _current.transport = self
        try:
            return fn(self, *args, **kwargs)
        finally:
            _current.transport = prev

    return method


def _patch_transport(cls) -> None:
    init = cls.__init__

    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        self._slither_signed = _SIGN_ALL or _in_slither_creation()
        init(self, *args, **kwargs)

    clone = cls.external_transport_clone

    @functools.wraps(clone)
    def external_transport_clone(self):
        copy = clone(self)
        copy._slither_signed = getattr(self, "_slither_signed", False)
        return copy

    names = {n for klass in cls.__mro__[:-1] for n in vars(klass) if not (n.startswith("__") and n.endswith("__"))}
    for name in sorted(names):  # every method a transport runs, wherever it is defined
        attr = inspect.getattr_static(cls, name)
        if inspect.isfunction(attr):  # not the static and class methods: they have no transport
            setattr(cls, name, _scoped(attr))
    cls.__init__ = __init__
    cls.external_transport_clone = _scoped(external_transport_clone)


if not getattr(_tcp.TCPTransport, "_slither_patched", False):
    _patch_transport(_tcp.TCPTransport)
    _tcp.TCPTransport._slither_patched = True
_tcp.serializer = _Router


def prepare_environment(log_dir: str) -> None:
    """Environment every actor process inherits: loopback addressing, quiet internal log."""
    os.environ.setdefault("THESPLOG_FILE", os.path.join(log_dir, "thespian.log"))
    os.environ.setdefault("THESPLOG_THRESHOLD", "ERROR")
    IPBase.thisSystem.add_local_addr(LOOPBACK)
