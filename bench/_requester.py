"""The requester actor of bench_actors.py: dispatches, grants demand back to the runner
in chunks of half its window, and reports the count of items to whoever asked."""

from thespian.actors import Actor

from slither.actors import Demand, DispatchDone, DispatchFailed, Results


class BenchRequester(Actor):
    def receiveMessage(self, msg, sender):
        if isinstance(msg, tuple) and msg and msg[0] == "go":
            _, target, dispatch = msg
            self.report, self.n, self.owed, self.half = sender, 0, 0, max(1, dispatch.demand // 2)
            self.seen, self.done_at = 0, None
            self.send(target, dispatch)
        elif isinstance(msg, Results):
            self.n += len(msg.items)
            self.seen += 1
            self.owed += 1
            if self.owed >= self.half:
                self.send(sender, Demand(msg.ref, self.owed))  # straight back to the runner
                self.owed = 0
        elif isinstance(msg, DispatchDone):  # a Results may still come after it (see slither.actors.InOrder)
            self.done_at = msg.stats["batches"]
        elif isinstance(msg, DispatchFailed):
            self.send(self.report, ("failed", msg.reason))
            return
        if getattr(self, "done_at", None) is not None and self.seen >= self.done_at:
            self.done_at = None
            self.send(self.report, ("done", self.n))
