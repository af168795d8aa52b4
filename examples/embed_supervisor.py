"""Use Slither's Supervisor in your own Thespian application, next to a pool.

The Supervisor restarts your actors with OTP semantics; a Slither Runtime in
the same program gives you worker pools for the heavy lifting.
"""

import os
import signal
import socket
import time

from thespian.actors import ActorSystem

import slither
from slither import _thespian
from slither.supervision import ChildSpec, SupervisedActor, Supervisor, SupervisorInit, WhichChildren


class Counter(SupervisedActor):
    """A toy stateful actor. Its state is lost when it crashes: the supervisor restarts it fresh."""

    count = 0

    def on_message(self, message, sender):
        if message == "inc":
            self.count += 1
            self.send(sender, self.count)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


if __name__ == "__main__":
    asys = ActorSystem("multiprocTCPBase", {"Admin Port": free_port()}, logDefs=_thespian.QUIET_LOGDEFS, transientUnique=True)
    try:
        sup = asys.createActor(Supervisor)
        asys.ask(
            sup,
            SupervisorInit(strategy="one_for_one", max_restarts=5, max_seconds=10, children=(ChildSpec("counter", Counter),)),
            5,
        )
        pid = None
        deadline = time.monotonic() + 10
        while pid is None and time.monotonic() < deadline:  # the child reports its pid asynchronously
            [(cid, _, pid, restarts)] = asys.ask(sup, WhichChildren(), 5)
            time.sleep(0.02)
        print(f"child {cid} runs as pid {pid}; killing it")
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            [(cid, alive, new_pid, restarts)] = asys.ask(sup, WhichChildren(), 5)
            if new_pid and new_pid != pid:
                break
            time.sleep(0.05)
        print(f"restarted as pid {new_pid} (restarts: {restarts})")

        with slither.Runtime(pools={"default": 2}) as rt:  # a pool beside your own actors
            print("pool says:", [i.payload for i in rt.dispatch(range(4), lambda xs: [x * x for x in xs])])
    finally:
        asys.shutdown()
