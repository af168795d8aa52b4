"""Long-lived pipes, supervised: the ``PipeSupervisor`` (``supervisor``), its
``PipeRunner`` children (``runner``), and the handle's side of their link
(``RemoteEngine``, ``engine``).

::

    RootSupervisor
    └── PipeSupervisor (id "pipes")     one_for_one, transient children, restart intensity per pipe
        └── PipeRunner (id: pipe name)  its own process: the pipe's stage threads (slither._pipe.run)
                                        and, per pool a stage uses, a data plane (slither._runner)

The link. The handle listens on a Unix socket of its own in the runtime's private
directory; every incarnation of the runner connects to it (``hello``), sets itself up
and says ``ready`` (or ``failed``: the start failed, nothing restarts it). Frames::

    handle → runner   ("in", [pickled Item, ...])  ("eos",)
                      ("listen", [event, ...])   the telemetry events to forward: those the
                                                 caller has handlers for (first, and on change)
    runner → handle   ("hello", token, pid)  ("ready",)  ("failed", error)
                      ("out", [(output, Item), ...], stats | None)  ("fanout", key, extra)
                      ("event", event, measurements, metadata)  ("eos", stats)
                      ("hung", stage, timeout, [key, ...])   then it exits
    supervisor → handle   ("died", token, pid, exitcode)  ("down", token, message, exitcode)
                          ("actor", token, message, sender)   an actor's Submit, Subscribe, Demand

Nothing accepted is lost. The handle keeps every input (pickled) until the runner has
delivered all of its results. A runner that dies is restarted by the PipeSupervisor;
the new one connects, and the handle sends it every input still unfinished, in order
(and the end of input, when draining). Results carry their key (input position, and
index at each ``cardinality="many"`` stage): the handle drops a key it has delivered
before, so each result reaches the caller once, though its handlers may have run
twice (at least once execution, as with Retry). More restarts than the pipe's
intensity allows: the supervisor stops restarting it and tells the handle ``down``,
which raises :class:`slither.PipeDown` to everyone waiting.

Poison. Each input counts the deaths of the runners it was sent to. In flight at two,
it is sent alone (quarantine: one suspect at a time, the rest waits), so a poison
input dies by itself; past ``max_replays`` it comes out skipped with ``RunnerDied``.
An inline stage past its ``timeout`` reports its chunk (``hung``) and ends the
runner; the stage's policy then decides those inputs (``_verdict``).
"""

from slither._actors import PIPES
from slither._pipe_runner.engine import RemoteEngine
from slither._pipe_runner.runner import PipeRunner
from slither._pipe_runner.supervisor import PipeInit, PipeSupervisor

__all__ = ["PIPES", "PipeSupervisor", "PipeRunner", "PipeInit", "RemoteEngine"]
