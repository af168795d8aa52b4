"""Placing a convention leader's children on its members (``PoolSpec(where=...)``).

A :class:`PlacingSupervisor` given this actor system's own capabilities
(``SupervisorInit.capabilities``) places each child that has requirements itself:
on this system or on a live member that offers them, the one running the fewest
of its children, pinned to that start of the member (its ``INCARNATION``); it
parks a child no live system offers until a member that does joins, and restarts
the children of a member that left (Thespian reports no exit for them). The
generic :class:`slither.supervision.Supervisor` knows none of this.
"""

from __future__ import annotations

from datetime import timedelta

from thespian.actors import ActorSystemConventionUpdate, WakeupMessage

from slither.supervision import INCARNATION, Supervisor, _Child, offers

_PLACE = "slither-place-parked"
_PLACE_DELAY = timedelta(milliseconds=50)


class PlacingSupervisor(Supervisor):
    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self._members: dict[str, dict] = {}  # admin address -> capabilities of live convention members
        self._subscribed = False
        self._placing = False

    def _target(self, child: _Child):
        req = child.spec.requirements
        if not req or self._cfg is None or self._cfg.capabilities is None:
            return super()._target(child)
        return self._place(req)

    def _place(self, req) -> tuple[dict, str] | None:
        """(requirements for Thespian, member incarnation) of the live system that
        offers ``req`` and runs the fewest of our children; None when none does."""
        if not self._subscribed:
            self._subscribed = True
            self.notifyOnSystemRegistrationChanges(True)  # members join and leave: ActorSystemConventionUpdate
        load: dict[str, int] = {}
        for c in self._children:
            if c.address is not None:
                load[c.member] = load.get(c.member, 0) + 1
        candidates = [("", dict(req))] if offers(self._cfg.capabilities, req) else []
        for caps in self._members.values():
            inc = caps.get(INCARNATION)
            if inc and offers(caps, req):  # pinned to this start of this member, not a dead one of the same name
                candidates.append((inc, {**req, INCARNATION: inc}))
        if not candidates:
            return None
        member, target = min(candidates, key=lambda c: load.get(c[0], 0))
        return target, member

    def _membership(self, update) -> None:
        addr = str(update.remoteAdminAddress)
        if update.remoteAdded:
            self._members[addr] = dict(update.remoteCapabilities or {})
            if not self._placing and any(c.parked for c in self._children):
                # Thespian announces every current member at once when we subscribe:
                # place parked children after the burst, so that they spread.
                self._placing = True
                self.wakeupAfter(_PLACE_DELAY, payload=_PLACE)
            return
        caps = self._members.pop(addr, None) or dict(update.remoteCapabilities or {})
        inc = caps.get(INCARNATION)
        if inc:  # Thespian reports no exit for the children of a member that died: these are gone
            for child in list(self._children):
                if child.member == inc and child.address is not None:
                    self._exited(child.address, lost=True)

    def _on_convention_update(self, message: ActorSystemConventionUpdate, sender) -> None:
        self._membership(message)

    def _on_wakeup(self, message: WakeupMessage) -> None:
        if message.payload != _PLACE:
            super()._on_wakeup(message)
            return
        self._placing = False
        for child in list(self._children):
            if child.parked and not self._stopping:
                self._start(child)
