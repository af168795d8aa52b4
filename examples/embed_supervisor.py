"""Slither inside your own Thespian application.

Your actor system, your Supervisor; Slither's tree becomes one of its children,
and your actors dispatch to it by message, without blocking their message loop.
Run: ``python examples/embed_supervisor.py``.
"""

import os
import signal

from thespian.actors import Actor, ActorSystem

import slither
from slither.actors import Demand, Dispatch, DispatchDone, DispatchFailed, InOrder, Results, capabilities
from slither.supervision import AwaitChild, ChildSpec, SupervisedActor, Supervisor, SupervisorInit, WhichChildren


def square(xs):
    return [x * x for x in xs]


class Counter(SupervisedActor):
    """A stateful actor of yours. Its state is lost when it crashes: the supervisor restarts it fresh."""

    count = 0

    def on_message(self, message, sender):
        if message == "inc":
            self.count += 1
            self.send(sender, self.count)


class Squares(Actor):
    """Asks Slither to square numbers; answers the total. Its loop stays free meanwhile."""

    def receiveMessage(self, message, sender):
        if isinstance(message, tuple) and message[0] == "squares":
            _, slither_address, n = message
            self.asker, self.total, self.order = sender, 0, InOrder()
            self.send(slither_address, Dispatch("sq", list(range(n)), square, batch_size=100, demand=4))
            return
        if isinstance(message, Results):
            self.send(sender, Demand(message.ref, 1))  # one more Results may come
        # Thespian may deliver a Results after DispatchDone: InOrder holds the end back until all came.
        for msg in self.order(message):
            if isinstance(msg, Results):
                self.total += sum(i.payload for i in msg.items)
            elif isinstance(msg, DispatchDone):
                self.send(self.asker, self.total)
            elif isinstance(msg, DispatchFailed):
                self.send(self.asker, msg.reason)


if __name__ == "__main__":
    asys = ActorSystem("multiprocTCPBase", capabilities(), transientUnique=True)
    try:
        sup = asys.createActor(Supervisor)
        init = SupervisorInit(strategy="one_for_one", max_restarts=5, max_seconds=10, children=(ChildSpec("counter", Counter),))
        asys.ask(sup, init, 10)
        with slither.Runtime(pools={"default": 2}, actor_system=asys, supervisor=sup) as rt:
            print("your supervisor's children:", [c.id for c in asys.ask(sup, WhichChildren(), 10)])

            counter = asys.ask(sup, AwaitChild("counter"), 10)  # running, with its pid
            print(f"counter runs as pid {counter.pid}; killing it")
            os.kill(counter.pid, signal.SIGKILL)
            again = asys.ask(sup, AwaitChild("counter", restarts=counter.restarts + 1), 10)
            print(
                f"restarted as pid {again.pid} (restarts: {again.restarts}); it counts from", asys.ask(again.address, "inc", 10)
            )

            squares = asys.createActor(Squares)
            print("sum of squares below 10,000, by message:", asys.ask(squares, ("squares", rt.address, 10_000), 60))
    finally:
        asys.shutdown()
