"""The messages of :mod:`slither.supervision` (child specs, requests and answers),
in one place: frozen attrs classes with an O(1) repr (Thespian formats every
message it sends)."""

from __future__ import annotations

import os
from typing import Any, NamedTuple

import attrs

from slither._sys import cheap_repr, node_key

_cheap_repr = cheap_repr

RESTART_TYPES = ("permanent", "transient", "temporary")
STRATEGIES = ("one_for_one", "one_for_all", "rest_for_one")


_cheap_repr = cheap_repr


@attrs.frozen(repr=False)
class ChildSpec:
    """How to start and restart one child.

    Args:
        id: the child's name, unique within its supervisor.
        actor: the Thespian ``Actor`` subclass to create.
        init: a message sent to the child after each (re)start, or None.
        restart: ``"permanent"``, ``"transient"`` or ``"temporary"``.
        requirements: Thespian ``targetActorRequirements`` (placement on a convention member).
        global_name: a Thespian ``globalName`` for the child (unique in its actor system).
    """

    id: str
    actor: type
    init: Any = None
    restart: str = attrs.field(default="permanent")
    requirements: Any = None  # Thespian targetActorRequirements: place the child on a matching convention member
    global_name: str | None = None  # Thespian globalName: the child is also found by this name in its system

    @restart.validator
    def _check_restart(self, _attr, value):
        if value not in RESTART_TYPES:
            raise ValueError(f"ChildSpec {self.id!r}: restart must be one of {RESTART_TYPES}, got {value!r}")

    __repr__ = _cheap_repr


@attrs.frozen(repr=False)
class SupervisorInit:
    """The first message a :class:`Supervisor` needs. Answered with :class:`Identity`."""

    strategy: str = "one_for_one"
    max_restarts: int = 3
    max_seconds: float = 5.0
    children: tuple = ()
    name: str = "supervisor"
    # This actor system's own capabilities: a PlacingSupervisor (slither._placement) given
    # them places children that have requirements on this system or on live members;
    # a plain Supervisor ignores them and leaves placement to Thespian.
    capabilities: Any = None

    def __attrs_post_init__(self):
        if self.strategy not in STRATEGIES:
            raise ValueError(f"supervisor {self.name!r}: strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        if self.max_restarts < 0 or self.max_seconds <= 0:
            raise ValueError(f"supervisor {self.name!r}: need max_restarts >= 0 and max_seconds > 0")

    __repr__ = _cheap_repr


@attrs.frozen(repr=False)
class StartChild:
    """Add and start a child; answered with :class:`ChildStarted`."""

    spec: ChildSpec
    __repr__ = _cheap_repr


@attrs.frozen(repr=False)
class ChildStarted:
    id: str
    address: Any
    __repr__ = _cheap_repr


@attrs.frozen(repr=False)
class StopChild:
    """Stop a child and forget its spec; answered with :class:`ChildStopped`."""

    id: str
    __repr__ = _cheap_repr


@attrs.frozen(repr=False)
class ChildStopped:
    id: str
    __repr__ = _cheap_repr


@attrs.frozen(repr=False)
class WhichChildren:
    """Answered with a list of :class:`ChildInfo`, one per child, in start order."""

    __repr__ = _cheap_repr


class ChildInfo(NamedTuple):
    """One child of a supervisor, as it is now.

    ``address`` is the child's current Thespian address (a new one after each
    restart; None while it is down), ``pid`` its process id once it reported it
    (None until then, and always for actors that do not derive from
    ``SupervisedActor``), ``restarts`` how many times it was restarted.
    """

    id: str
    alive: bool
    pid: int | None
    restarts: int
    address: Any


@attrs.frozen(repr=False)
class AwaitChild:
    """Answered with the :class:`ChildInfo` of child ``id`` once it is running with a
    known pid after at least ``restarts`` restarts: at once if it is, else when it
    reports in. Ask with ``restarts=info.restarts + 1`` to await the next restart."""

    id: str
    restarts: int = 0
    __repr__ = _cheap_repr


@attrs.frozen(repr=False)
class Identify:
    __repr__ = _cheap_repr


@attrs.frozen(repr=False)
class Identity:
    pid: int
    pgid: int
    node: str = ""  # node_key() of the process: a pid means something only on its own node
    __repr__ = _cheap_repr


def _identity() -> Identity:
    return Identity(os.getpid(), os.getpgid(0), node_key())


@attrs.frozen(repr=False)
class ExitingNormally:
    """A child tells its supervisor it is about to exit on purpose (for ``transient``)."""

    __repr__ = _cheap_repr
