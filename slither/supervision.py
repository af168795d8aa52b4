"""An Erlang/OTP-style ``Supervisor`` as a Thespian actor.

Thespian only *reports* that a child exited (``ChildActorExited``), and not
always (a graceful exit is reported twice; a SIGKILLed grandchild is never
reported). This supervisor adds what OTP gives: child specs, restart types,
strategies, restart intensity, and a liveness watch on each child's process
id so a death is noticed even when the message never comes.

Use it in your own Thespian application::

    from thespian.actors import ActorSystem
    from slither.supervision import ChildSpec, Supervisor, SupervisorInit

    asys = ActorSystem("multiprocTCPBase")
    sup = asys.createActor(Supervisor)
    asys.ask(sup, SupervisorInit(
        strategy="one_for_one", max_restarts=3, max_seconds=5.0,
        children=[ChildSpec("worker-1", MyActor, init=Configure(...))]), 5)

Children are created in the supervisor's process (Thespian forks them from
it). After each (re)start the supervisor sends the child ``Identify()``;
actors that derive from :class:`SupervisedActor` answer with their pid and
are watched by pid as well. Then ``spec.init`` (if any) is sent.

Restart types: ``permanent`` (always restarted), ``transient`` (restarted
unless it announced a normal exit with :class:`ExitingNormally`),
``temporary`` (never restarted). Strategies: ``one_for_one``,
``one_for_all``, ``rest_for_one``. More than ``max_restarts`` restarts
within ``max_seconds``: the supervisor stops every child and exits; its own
parent sees the exit (``ChildActorExited``) and applies *its* child spec,
exactly as OTP does.

Links: a Thespian child actor does not notice that its parent died (a
supervisor shut down while a child was still starting leaves that child
running forever). Every :class:`Supervisor` and :class:`SupervisedActor`
process therefore dies with its parent process, as a linked Erlang process
does (Linux ``PR_SET_PDEATHSIG``; elsewhere nothing changes).
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections import deque
from datetime import timedelta

from thespian.actors import (
    Actor,
    ActorExitRequest,
    ActorSystemConventionUpdate,
    ChildActorExited,
    PoisonMessage,
    WakeupMessage,
)

from slither._supervision_messages import (
    AwaitChild,
    ChildInfo,
    ChildSpec,
    ChildStarted,
    ChildStopped,
    ExitingNormally,
    Identify,
    Identity,
    StartChild,
    StopChild,
    SupervisorInit,
    WhichChildren,
    _identity,
)
from slither._sys import link_to_parent, node_key, pid_alive

_LIVENESS_PERIOD = timedelta(seconds=0.25)


def offers(capabilities, requirements) -> bool:
    """Thespian's placement check (``actorSystemCapabilityCheck``) for children with requirements."""
    return all(str(capabilities.get(k)) == str(v) for k, v in (requirements or {}).items())


INCARNATION = "slither_incarnation"  # a capability unique to each start of a member (slither node)


def _die_with_parent() -> None:
    """Link this actor's process to its parent's: when the parent dies, so does it.

    Only in a process Thespian forked for an actor (never in the caller's own
    process, as with ``simpleSystemBase``), and only on Linux.
    """
    parent = multiprocessing.parent_process()
    # Thespian names the processes it forks for actors "Actor_<class>__<address>".
    if parent is not None and multiprocessing.current_process().name.startswith("Actor_"):
        link_to_parent(parent.pid)


class SupervisedActor(Actor):
    """Base for actors that answer :class:`Identify`, so supervisors watch their pid.

    Subclasses implement :meth:`on_message`. An exception in it is logged
    and, as in Erlang, ends the process so the supervisor restarts it. The
    process dies with its parent (see the module docstring, "Links").
    """

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        _die_with_parent()

    def receiveMessage(self, message, sender):
        if isinstance(message, Identify):
            self.send(sender, _identity())
            return
        if isinstance(message, (ActorExitRequest, ChildActorExited, PoisonMessage)) and not self.handles_system(message):
            return
        try:
            self.on_message(message, sender)
        except Exception:
            import traceback

            traceback.print_exc()
            os._exit(70)

    def handles_system(self, message) -> bool:  # noqa: ARG002 - hook
        """Return True to receive Thespian system messages in :meth:`on_message`."""
        return False

    def on_message(self, message, sender) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


class _Child:
    __slots__ = ("spec", "address", "pid", "normal_exit", "restarts", "member", "parked")

    def __init__(self, spec: ChildSpec):
        self.spec = spec
        self.address = None
        self.pid: int | None = None
        self.normal_exit = False
        self.restarts = 0
        self.member = ""  # the incarnation of the convention member it runs on ("" here)
        self.parked = False  # no live system offers its requirements: started when one joins


def _info(child: _Child) -> ChildInfo:
    return ChildInfo(child.spec.id, child.address is not None, child.pid, child.restarts, child.address)


class Supervisor(Actor):
    """A reusable supervisor actor. See the module docstring.

    Subclass hooks (all run in the supervisor's process):
    :meth:`on_child_identified`, :meth:`on_give_up`, :meth:`on_init`.
    """

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        _die_with_parent()
        self._cfg: SupervisorInit | None = None
        self._children: list[_Child] = []
        self._restarts: deque = deque()
        self._stopping = False
        self._watching = False
        self._awaiting: list[tuple[AwaitChild, object]] = []  # AwaitChild requests not answered yet

    # -- hooks ---------------------------------------------------------
    def on_init(self, init: SupervisorInit) -> None:
        """Called once, before the initial children start."""

    def on_child_identified(self, child_id: str, pid: int) -> None:
        """Called when a (re)started child reports its pid."""

    def on_give_up(self) -> None:
        """Called when restart intensity is exceeded, before children stop."""

    def on_other_message(self, message, sender) -> None:
        """Messages this supervisor does not know; default: ignore."""

    # -- message loop --------------------------------------------------
    def receiveMessage(self, message, sender):
        name = self._HANDLERS.get(type(message))
        if name is None:  # a subclass of one of them
            name = next((h for t, h in self._HANDLERS.items() if isinstance(message, t)), None)
        if name is not None:
            getattr(self, name)(message, sender)  # by name: a subclass may override a handler
        elif isinstance(message, WakeupMessage):
            self._on_wakeup(message)
        elif not isinstance(message, PoisonMessage):
            self.on_other_message(message, sender)

    def _on_supervisor_init(self, message: SupervisorInit, sender) -> None:
        if self._cfg is None:
            self._cfg = message
            self.on_init(message)
            for spec in message.children:
                self._add(spec)
        self.send(sender, _identity())

    def _on_identify(self, message, sender) -> None:
        self.send(sender, _identity())

    def _on_start_child(self, message: StartChild, sender) -> None:
        child = self._add(message.spec)
        self.send(sender, ChildStarted(message.spec.id, child.address))

    def _on_stop_child(self, message: StopChild, sender) -> None:
        for child in list(self._children):
            if child.spec.id == message.id:
                self._children.remove(child)
                if child.address is not None:
                    self.send(child.address, ActorExitRequest())
        self.send(sender, ChildStopped(message.id))

    def _on_which_children(self, message, sender) -> None:
        self.send(sender, [_info(c) for c in self._children])

    def _on_await_child(self, message: AwaitChild, sender) -> None:
        self._awaiting.append((message, sender))
        self._answer_awaiting()

    def _answer_awaiting(self) -> None:
        left = []
        for request, sender in self._awaiting:
            child = next((c for c in self._children if c.spec.id == request.id), None)
            if child is not None and child.address is not None and child.pid is not None and child.restarts >= request.restarts:
                self.send(sender, _info(child))
            else:
                left.append((request, sender))
        self._awaiting = left

    def _on_identity(self, message: Identity, sender) -> None:
        for child in self._children:
            if child.address == sender:
                if message.node and message.node != node_key():
                    continue  # a child on another node: its pid cannot be watched from here
                child.pid = message.pid
                self.on_child_identified(child.spec.id, message.pid)
                self._watch()
                if self._awaiting:
                    self._answer_awaiting()

    def _on_exiting_normally(self, message, sender) -> None:
        for child in self._children:
            if child.address == sender:
                child.normal_exit = True

    def _on_child_exited(self, message: ChildActorExited, sender) -> None:
        self._exited(message.childAddress)

    def _on_convention_update(self, message: ActorSystemConventionUpdate, sender) -> None:
        """Convention members joined or left (see slither._placement); nothing here."""

    def _on_wakeup(self, message: WakeupMessage) -> None:
        self._watching = False
        if not self._stopping:
            for child in list(self._children):
                if child.pid is not None and child.address is not None and not pid_alive(child.pid):
                    self._report_dead(child)
            self._watch()

    def _on_exit_request(self, message, sender) -> None:
        self._stopping = True
        for child in self._children:
            if child.address is None:
                continue
            if child.pid is not None and not pid_alive(child.pid):
                self._report_dead(child)  # nothing to ask; and Thespian must not wait for it
            else:
                self.send(child.address, ActorExitRequest())

    _HANDLERS = {
        SupervisorInit: "_on_supervisor_init",
        Identify: "_on_identify",
        StartChild: "_on_start_child",
        StopChild: "_on_stop_child",
        WhichChildren: "_on_which_children",
        AwaitChild: "_on_await_child",
        Identity: "_on_identity",
        ExitingNormally: "_on_exiting_normally",
        ChildActorExited: "_on_child_exited",
        ActorSystemConventionUpdate: "_on_convention_update",
        ActorExitRequest: "_on_exit_request",
    }

    # -- internals -----------------------------------------------------
    def _report_dead(self, child: _Child) -> None:
        """A child found dead that Thespian has not reported: report it to ourselves.

        The report takes the usual path (restart, or nothing when stopping), and
        Thespian, on seeing it, drops the child from its own list, which it would
        otherwise wait on when this actor exits.
        """
        self.send(self.myAddress, ChildActorExited(child.address))

    def _watch(self) -> None:
        if not self._watching and not self._stopping:
            self._watching = True
            self.wakeupAfter(_LIVENESS_PERIOD)

    def _add(self, spec: ChildSpec) -> _Child:
        if any(c.spec.id == spec.id for c in self._children):
            raise ValueError(f"duplicate child id {spec.id!r}")
        child = _Child(spec)
        self._children.append(child)
        self._start(child)
        return child

    def _target(self, child: _Child) -> tuple[dict | None, str] | None:
        """Where to create ``child``: (Thespian's targetActorRequirements, the member it
        lands on, "" here), or None to park it until a system that offers them joins.
        Here: its own requirements, as Thespian places them (see slither._placement)."""
        req = child.spec.requirements
        return (dict(req) if req else None), ""

    def _start(self, child: _Child) -> None:
        placed = self._target(child)
        if placed is None:
            child.address, child.parked = None, True
            return
        target, child.member = placed
        child.parked = False
        child.address = self.createActor(child.spec.actor, targetActorRequirements=target, globalName=child.spec.global_name)
        child.pid = None
        child.normal_exit = False
        self.send(child.address, Identify())
        if child.spec.init is not None:
            self.send(child.address, child.spec.init)

    def _exited(self, address, lost: bool = False) -> None:
        child = next((c for c in self._children if c.address is not None and c.address == address), None)
        if child is None or self._stopping:
            return  # a duplicate report, or a child we already replaced or stopped
        child.address = None
        restart = child.spec.restart
        if restart == "temporary" or (restart == "transient" and child.normal_exit):
            self._children.remove(child)
            return
        # A member that left takes its children along: not a crash loop, not counted.
        if not lost and not self._allow_restart():
            self._give_up()
            return
        strategy = self._cfg.strategy if self._cfg else "one_for_one"
        if strategy == "one_for_one":
            victims = [child]
        elif strategy == "one_for_all":
            victims = list(self._children)
        else:
            victims = self._children[self._children.index(child) :]
        for v in victims:
            if v is not child and v.address is not None:
                old = v.address
                v.address = None  # its exit report will find no match
                self.send(old, ActorExitRequest())
        for v in victims:
            v.restarts += 1
            self._start(v)

    def _allow_restart(self) -> bool:
        cfg = self._cfg or SupervisorInit()
        now = time.monotonic()
        self._restarts.append(now)
        while self._restarts and now - self._restarts[0] > cfg.max_seconds:
            self._restarts.popleft()
        return len(self._restarts) <= cfg.max_restarts

    def _give_up(self) -> None:
        self._stopping = True
        try:
            self.on_give_up()
        finally:
            for c in self._children:
                if c.address is not None:
                    self.send(c.address, ActorExitRequest())
            self.send(self.myAddress, ActorExitRequest())


__all__ = [
    "Supervisor",
    "SupervisedActor",
    "ChildSpec",
    "SupervisorInit",
    "StartChild",
    "ChildStarted",
    "StopChild",
    "ChildStopped",
    "WhichChildren",
    "ChildInfo",
    "AwaitChild",
    "Identify",
    "Identity",
    "ExitingNormally",
    "pid_alive",
    "node_key",
]
