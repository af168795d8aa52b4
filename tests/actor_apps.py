"""A user's Thespian actors that dispatch through Slither's messages (tests/test_actors.py)."""

import os

import attrs
from thespian.actors import Actor

from slither.actors import Credit, Demand, DispatchDone, DispatchFailed, InOrder, Output, PipeFailed, Results, Submit, Subscribe
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
            self.report, self.got, self.active, self.order = sender, [], True, InOrder()
            self.send(msg.target, msg.dispatch)
        elif isinstance(msg, (Results, DispatchDone, DispatchFailed)):
            if isinstance(msg, Results):
                if msg.seq == 0:
                    self.send(self.report, ("first", msg.ref))
                self.send(sender, Demand(msg.ref, 1))
            for m in self.order(msg):
                if isinstance(m, Results):
                    self.got.extend(i.payload for i in m.items)
                elif isinstance(m, DispatchDone):
                    self.active = False
                    self.send(self.report, ("done", m.ref, self.got, m.stats))
                else:
                    self.active = False
                    self.send(self.report, ("failed", m.ref, m.reason))
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


class PipeProducer(Actor):
    """Feeds payloads 0..n-1 to a long-lived pipe within the credit it is given."""

    def receiveMessage(self, msg, sender):
        if isinstance(msg, tuple) and msg[0] == "produce":
            _, self.target, self.pipe, self.n = msg
            self.next, self.report = 0, sender
            self.send(self.target, Submit("prod", [], pipe=self.pipe, window=16))
        elif isinstance(msg, Credit):
            k = min(msg.n, self.n - self.next)
            if k:
                self.send(self.target, Submit("prod", list(range(self.next, self.next + k)), pipe=self.pipe))
                self.next += k
        elif isinstance(msg, PipeFailed):
            self.send(self.report, ("failed", msg.reason))


class PipeSubscriber(Actor):
    """Takes a long-lived pipe's results as Output messages, one Demand per Output."""

    def receiveMessage(self, msg, sender):
        if isinstance(msg, tuple) and msg[0] == "subscribe":
            _, self.target, self.pipe, self.expect = msg
            self.got, self.report = [], sender
            self.send(self.target, Subscribe("sub", demand=4, pipe=self.pipe))
        elif isinstance(msg, Output):
            self.got.extend((msg.output_name, i.payload) for i in msg.items)
            self.send(self.target, Demand("sub", 1, pipe=self.pipe))
            if len(self.got) >= self.expect:
                self.send(self.report, ("got", list(self.got)))
        elif isinstance(msg, PipeFailed):
            self.send(self.report, ("failed", msg.reason))
