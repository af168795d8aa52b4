"""The public Supervisor actor in a bare Thespian system (no Slither runtime)."""

import os
import signal
import socket
import time

import pytest
from thespian.actors import ActorSystem

import slither  # noqa: F401 - applies the loopback patch
from slither import _thespian
from slither.supervision import (
    ChildSpec,
    ExitingNormally,
    Identity,
    SupervisedActor,
    Supervisor,
    SupervisorInit,
    WhichChildren,
    pid_alive,
)
from slither.testing import wait_pids_gone

pytestmark = pytest.mark.timeout(60)


class Echo(SupervisedActor):
    def on_message(self, message, sender):
        if message == "pid":
            self.send(sender, os.getpid())
        elif message == "quit":
            self.send(sender, "bye")
            self.send(self.myAddress, __import__("thespian.actors").actors.ActorExitRequest())
        elif message == "normal":
            # A transient child announces a normal exit, then leaves.
            self.send(self.parent_hint, ExitingNormally())
            os._exit(0)
        elif isinstance(message, tuple) and message[0] == "parent":
            self.parent_hint = message[1]


@pytest.fixture()
def asys():
    port = socket.socket()
    port.bind(("127.0.0.1", 0))
    p = port.getsockname()[1]
    port.close()
    _thespian.prepare_environment("/tmp")
    system = ActorSystem("multiprocTCPBase", {"Admin Port": p}, logDefs=_thespian.QUIET_LOGDEFS, transientUnique=True)
    pids = []
    yield system, pids
    system.shutdown()
    assert not wait_pids_gone(pids, timeout=10)


def children(system, sup):
    return system.ask(sup, WhichChildren(), 5)


def wait_for(pred, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.02)  # polls the supervisor's answer; there is no event to await from outside the actor system
    raise AssertionError("condition not met in time")


def start(system, strategy, n=3, restart="permanent", max_restarts=5):
    sup = system.createActor(Supervisor)
    specs = tuple(ChildSpec(f"c{i}", Echo, restart=restart) for i in range(n))
    ident = system.ask(sup, SupervisorInit(strategy=strategy, max_restarts=max_restarts, max_seconds=5, children=specs), 5)
    assert isinstance(ident, Identity)
    wait_for(lambda: all(c.pid for c in children(system, sup)))
    return sup


def pids_of(system, sup):
    return {c.id: c.pid for c in children(system, sup) or []}  # None: the supervisor is gone


@pytest.mark.parametrize(
    "strategy, victim, expect_restarted",
    [("one_for_one", "c1", {"c1"}), ("one_for_all", "c1", {"c0", "c1", "c2"}), ("rest_for_one", "c1", {"c1", "c2"})],
)
def test_strategies_restart_the_right_children(asys, strategy, victim, expect_restarted):
    system, tracked = asys
    sup = start(system, strategy)
    before = pids_of(system, sup)
    tracked.extend(before.values())
    os.kill(before[victim], signal.SIGKILL)

    def settled():
        now = pids_of(system, sup)
        changed = {c for c in now if now[c] and now[c] != before[c]}
        return now if changed == expect_restarted and all(now.values()) else None

    now = wait_for(settled)
    tracked.extend(now.values())
    for c in before:
        if c not in expect_restarted:
            assert now[c] == before[c] and pid_alive(before[c])
        else:
            assert not pid_alive(before[c]) or c != victim


def test_temporary_children_are_not_restarted(asys):
    system, tracked = asys
    sup = start(system, "one_for_one", n=1, restart="temporary")
    pid = pids_of(system, sup)["c0"]
    tracked.append(pid)
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: children(system, sup) == [])


def test_restart_intensity_exceeded_stops_everything(asys):
    system, tracked = asys
    sup = start(system, "one_for_one", n=2, max_restarts=2)
    sup_pid = system.ask(sup, __import__("slither.supervision").supervision.Identify(), 5).pid
    tracked.append(sup_pid)
    for _ in range(3):
        if not pid_alive(sup_pid):
            break
        kids = pids_of(system, sup)
        if "c0" not in kids or not kids["c0"]:
            kids = wait_for(lambda: (k := pids_of(system, sup)).get("c0") and k if pid_alive(sup_pid) else {"c0": None})
        if not kids.get("c0"):
            break
        tracked.extend(kids.values())
        os.kill(kids["c0"], signal.SIGKILL)
        wait_for(lambda k=kids: (pids_of(system, sup) or {}).get("c0") not in (None, k["c0"]) if pid_alive(sup_pid) else True)
        if not pid_alive(sup_pid):
            break
    assert not wait_pids_gone([sup_pid] + tracked, timeout=10)


def test_killed_child_is_replaced_with_a_live_one(asys):
    system, tracked = asys
    sup = start(system, "one_for_one", n=1)
    pid = pids_of(system, sup)["c0"]
    tracked.append(pid)
    os.kill(pid, signal.SIGKILL)
    new = wait_for(lambda: (p := pids_of(system, sup)["c0"]) and p != pid and p)
    tracked.append(new)
    assert pid_alive(new)


def test_children_die_with_a_killed_supervisor(asys):
    """Thespian never tells a child that its parent died; the link does (Erlang semantics)."""
    system, tracked = asys
    sup = start(system, "one_for_one", n=2)
    sup_pid = system.ask(sup, __import__("slither.supervision").supervision.Identify(), 5).pid
    kids = list(pids_of(system, sup).values())
    tracked.extend([sup_pid, *kids])
    os.kill(sup_pid, signal.SIGKILL)
    assert not wait_pids_gone(kids, timeout=10), "children outlived their supervisor"


def test_handling_one_child_exit_reports_every_dead_child():
    """Thespian's own _childExited dropped every dead child from its list while handling
    one exit, so a child dead a moment later was never reported (and its parent waited for
    it at shutdown). Patched in slither._thespian: the others are reported."""
    from thespian.system import multiprocCommon as mpc

    assert mpc.MultiProcReplicator._childExited is _thespian._child_exited, "this Thespian was left unpatched"

    class Proc:
        def __init__(self, alive):
            self.alive = alive

        def is_alive(self):
            return self.alive

        def join(self, timeout=None):
            pass

    class Transport:
        myAddress = "me"

        def __init__(self):
            self.sent = []

        def scheduleTransmit(self, _token, intent):
            self.sent.append(intent.message)

    mgr = object.__new__(mpc.MultiProcManager)
    mgr.transport = Transport()
    dead, alive = mpc.ChildInfo("b", Echo, Proc(False), 2), mpc.ChildInfo("c", Echo, Proc(True), 3)
    mgr._child_procs = [dead, alive]  # "a" was reported (and dropped) by the SIGCHLD path
    mgr._childExited("a")
    assert [m.childAddress for m in mgr.transport.sent] == ["b"]
    assert mgr._child_procs == [alive]


def _kill_both_again_and_again(system, sup, tracked, rounds=8):
    """Both children SIGKILLed back to back, ``rounds`` times: after each round, once both
    are replaced, Thespian lists exactly the live children (a ghost would be waited for
    at shutdown)."""
    from thespian.system.messages.status import Thespian_StatusReq

    for _ in range(rounds):
        before = pids_of(system, sup)
        tracked.extend(before.values())
        for pid in before.values():
            os.kill(pid, signal.SIGKILL)
        old = set(before.values())

        def replaced(old=old):
            p = pids_of(system, sup)
            return p if p and all(p.values()) and not set(p.values()) & old else None

        now = wait_for(replaced)
        tracked.extend(now.values())
        listed = wait_for(lambda: system.ask(sup, Thespian_StatusReq(), 5))
        assert len(listed.childActors) == 2, f"Thespian lists {len(listed.childActors)} children, 2 are alive"


def test_children_killed_together_leave_no_ghost_in_thespians_list(asys):
    system, tracked = asys
    _kill_both_again_and_again(system, start(system, "one_for_one", n=2, max_restarts=100), tracked)


def _stock_child_exited(self, child_addr):
    """Thespian 4.0.1's own MultiProcReplicator._childExited, which slither._thespian replaces."""
    children = getattr(self, "_child_procs", [])
    self._child_procs = list(filter(self._checkChildLiveness, children))


def test_a_death_thespian_never_reports_is_reported_by_the_supervisor(monkeypatch):
    """With Thespian's own _childExited (it loses the report of a child dying close to
    another), the supervisor's pid watch finds the death and reports it to Thespian too:
    the list still matches, and the system shuts down without waiting on a ghost."""
    from thespian.system import multiprocCommon as mpc

    monkeypatch.setattr(mpc.MultiProcReplicator, "_childExited", _stock_child_exited)  # before the admin forks
    port = socket.socket()
    port.bind(("127.0.0.1", 0))
    p = port.getsockname()[1]
    port.close()
    system = ActorSystem("multiprocTCPBase", {"Admin Port": p}, logDefs=_thespian.QUIET_LOGDEFS, transientUnique=True)
    tracked = []
    try:
        _kill_both_again_and_again(system, start(system, "one_for_one", n=2, max_restarts=100), tracked)
    finally:
        system.shutdown()
    assert not wait_pids_gone(tracked, timeout=10)


def _forked_from_us(pid):
    """Thespian's processes are forks of this one (same command line); they run in a session of their own."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as a, open("/proc/self/cmdline", "rb") as b:
            return pid_alive(pid) and a.read() == b.read()
    except OSError:
        return False


def test_supervisor_stopped_while_children_start_leaves_none_behind():
    """Shutting a system down right after asking for children must not orphan one still starting."""
    for _ in range(3):
        port = socket.socket()
        port.bind(("127.0.0.1", 0))
        p = port.getsockname()[1]
        port.close()
        system = ActorSystem("multiprocTCPBase", {"Admin Port": p}, logDefs=_thespian.QUIET_LOGDEFS, transientUnique=True)
        before = {int(x) for x in os.listdir("/proc") if x.isdigit()}
        try:
            sup = system.createActor(Supervisor)
            system.tell(sup, SupervisorInit(children=tuple(ChildSpec(f"c{i}", Echo) for i in range(3))))
        finally:
            system.shutdown()
        mine = [x for x in ({int(x) for x in os.listdir("/proc") if x.isdigit()} - before) if _forked_from_us(x)]
        assert not wait_pids_gone(mine, timeout=10), f"orphaned actor processes: {mine}"
