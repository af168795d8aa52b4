"""A user's Thespian actors that dispatch through Slither's messages (tests/test_actors.py)."""

import os

import attrs
from thespian.actors import Actor

from slither.actors import Demand, DispatchDone, DispatchFailed, Results
from slither.supervision import SupervisedActor


@attrs.frozen
class Go:
    """Send ``dispatch`` to ``target``; report to the sender of Go."""

    target: object
    dispatch: object


class Requester(Actor):
    """Dispatches, grants one more Results per Results it gets, reports what came back.

    Answers "ping" at any time with ("pong", dispatch still running, results so far, pid).
    """

    def receiveMessage(self, msg, sender):
        if isinstance(msg, Go):
            self.report, self.got, self.active = sender, [], True
            self.send(msg.target, msg.dispatch)
        elif isinstance(msg, Results):
            self.got.extend(i.payload for i in msg.items)
            if msg.seq == 0:
                self.send(self.report, ("first", msg.ref))
            self.send(sender, Demand(msg.ref, 1))
        elif isinstance(msg, DispatchDone):
            self.active = False
            self.send(self.report, ("done", msg.ref, self.got, msg.stats))
        elif isinstance(msg, DispatchFailed):
            self.active = False
            self.send(self.report, ("failed", msg.ref, msg.reason))
        elif msg == "ping":
            self.send(sender, ("pong", getattr(self, "active", False), len(getattr(self, "got", ())), os.getpid()))


def square(xs):
    return [x * x for x in xs]


class Blocking(Actor):
    """Calls ``slither.dispatch`` the blocking way: a runtime of its own, in this actor's process."""

    def receiveMessage(self, msg, sender):
        if msg == "go":
            import slither

            out = slither.dispatch(range(10), "actor_apps:square")
            self.send(sender, ([i.payload for i in out], slither.runtime().pids()))


class Counter(SupervisedActor):
    count = 0

    def on_message(self, message, sender):
        if message == "inc":
            self.count += 1
            self.send(sender, self.count)
