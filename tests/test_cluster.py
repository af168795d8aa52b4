"""A convention on one machine: a leader runtime and `slither node` members in
separate processes, each its own Thespian actor system on its own loopback
port. Members use the network data path (--network-only) as if remote."""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading

import pytest
from cluster_harness import SECRET, Member, _free_port

import slither
from slither import PoolSpec, Retry
from slither.cluster import Convention, client_handshake, connect
from slither.errors import ConfigurationError
from slither.testing import wait_pids_gone
from slither.testing.netns import Unavailable, two_hosts

pytestmark = [pytest.mark.timeout(120), pytest.mark.chaos]


@pytest.fixture(scope="module")
def leader():
    port = _free_port()
    rt = slither.Runtime(pools={"default": 1}, convention=Convention(f"127.0.0.1:{port}", SECRET), start_timeout=20).start()
    member = Member(f"127.0.0.1:{port}", "m1")
    try:
        rt.add_pool("span", PoolSpec(size=3, where=[{"node": "leader"}, {"node": "m1"}], max_restarts=20, max_seconds=5))
        yield rt, member, f"127.0.0.1:{port}"
    finally:
        rt.shutdown()
        member.stop()


def pid_of(xs):
    return [(x, os.getpid()) for x in xs]


def test_work_spreads_over_the_leader_and_a_member(leader):
    rt, member, _ = leader
    conns = list(rt.pool("span").workers.values())
    assert sorted(c.remote for c in conns) == [False, False, True]  # workers 0 and 2 here, 1 on m1
    out = rt.dispatch(range(60), pid_of, pool="span", batch_size=1, max_in_flight=6)
    assert [i.payload[0] for i in out] == list(range(60))
    remote_pids = {c.pid for c in conns if c.remote}
    used = {i.payload[1] for i in out}
    assert used & remote_pids and used - remote_pids, "both hosts ran batches"
    assert remote_pids <= set(member.pids())  # the remote worker is one of the member's processes


class AcrossHosts(slither.Pipe):
    stages = [
        slither.stage.inline("prep", handler=lambda item, ctx: item.payload + 1),
        slither.stage.pool("square", fn=lambda xs: [(x * x, os.getpid()) for x in xs], pool="span", batch_size=1),
    ]


def test_pipes_affinity_and_telemetry_work_unchanged_across_hosts(leader):
    rt, member, _ = leader
    remote = {c.pid for c in rt.pool("span").workers.values() if c.remote}
    # A pipe whose pool stage spreads over the leader and the member.
    out = rt.run_pipe(AcrossHosts, range(30))["default"]
    assert sorted(i.payload[0] for i in out) == [(x + 1) ** 2 for x in range(30)]
    assert {i.payload[1] for i in out} & remote, "the member ran some of the pipe's batches"
    # A long-lived one too: its stages stay in this process, where the member's workers are reachable.
    h = rt.start_pipe(AcrossHosts)
    try:
        for x in range(30):
            h.submit(x)
        got = [item.payload for _, (_, item) in zip(range(30), h.results(timeout=60))]
        assert h.status()["runner_pid"] == os.getpid()
    finally:
        h.stop()
    assert sorted(p[0] for p in got) == [(x + 1) ** 2 for x in range(30)]
    # Session affinity: every batch of a session on one worker, whichever host it is on.
    for _ in range(4):
        ctx = slither.Context()
        pids = {
            i.payload
            for i in rt.dispatch(
                range(12), lambda xs: [os.getpid() for _ in xs], pool="span", batch_size=2, affinity="session", context=ctx
            )
        }
        assert len(pids) == 1
    # Telemetry: an event emitted by a worker on the member reaches the leader's handlers.
    got = []
    slither.telemetry.attach("across", [("custom", "remote")], lambda e, m, md: got.append((m, md)))
    try:

        def emit(xs):
            slither.telemetry._emit_anywhere(("custom", "remote"), {"n": len(xs)}, {"pid": os.getpid()})
            return xs

        rt.dispatch(range(12), emit, pool="span", batch_size=1, max_in_flight=6)
    finally:
        slither.telemetry.detach("across")
    assert sum(m["n"] for m, _ in got) == 12
    assert {md["pid"] for _, md in got} & remote, "events from the member's worker arrived"


def test_a_late_batch_on_a_member_times_out_and_the_pool_carries_on(leader):
    rt, _, _ = leader

    def slow_on_member(xs):
        import time

        from slither import worker

        if worker.info()["index"] == 1:  # the worker on m1
            time.sleep(60)
        return xs

    with pytest.raises(slither.DispatchError) as ei:
        rt.dispatch(range(12), slow_on_member, pool="span", batch_size=1, timeout=1.0)
    assert isinstance(ei.value.reason, slither.BatchTimeout)
    assert [i.payload for i in rt.dispatch(range(10), lambda xs: xs, pool="span", batch_size=1)] == list(range(10))


def test_a_stopped_member_worker_does_not_stall_the_pool(leader):
    """The member's worker stops reading (SIGSTOPped: a host cut off alike) while 8 MB batches,
    more than TCP buffers hold, are on their way to it, with no batch timeout: the leader's
    workers' results keep coming (no thread of the leader blocks sending to it). Then it is
    killed: its batches run again, none lost, and the member brings the worker back."""
    rt, _, _ = leader
    assert rt.pool("span").wait_ready(30)  # the member's worker is back from the test before
    conn = next(c for c in rt.pool("span").workers.values() if c.remote)
    remote = conn.pid
    blob = b"x" * (8 << 20)
    os.kill(remote, signal.SIGSTOP)
    try:
        stream = rt.dispatch_stream(
            [blob] * 10,
            lambda xs: [(os.getpid(), len(x)) for x in xs],
            pool="span",
            batch_size=1,
            max_in_flight=6,
            ordering="as_completed",
            timeout=None,
            on_error=Retry(3, backoff=0),
        )
        first = [next(stream).payload for _ in range(6)]
        assert all(pid != remote and n == 8 << 20 for pid, n in first)
        # What TCP did not take (it holds ~4 MB for a peer that does not read) was handed to the
        # connection's sender thread. Before, the caller blocked in sendall until TCP's user
        # timeout (15 s) dropped the connection, and only then took these six results.
        sender = f"slither-span-w{conn.index}-send"
        assert sender in {t.name for t in threading.enumerate()}
    finally:
        os.kill(remote, signal.SIGKILL)
    rest = [i.payload for i in stream]
    assert len(rest) == 4 and all(n == 8 << 20 for _, n in rest)
    assert rt.pool("span").wait_ready(30)
    assert remote not in {c.pid for c in rt.pool("span").workers.values()}


def test_a_wrong_secret_is_refused_before_anything_is_unpickled(leader):
    rt, _, _ = leader
    host, port = rt._hub_tcp
    with pytest.raises(ConnectionRefusedError):
        connect((host, port), b"not-the-secret-at-all-0000")
    # A peer that skips the handshake and sends a pickle gets nothing unpickled: the hub closes on it.
    with socket.create_connection((host, port), timeout=10) as s:
        s.recv(64)  # the hub's challenge
        s.sendall(b"\x80\x05" + b"x" * 62)  # not a valid answer
        s.settimeout(10)
        assert s.recv(64) == b""  # closed
    # And a leader that does not know the secret is not trusted by a worker.
    a, b = socket.socketpair()
    threading.Thread(target=lambda: (a.sendall(b"SLTH1" + b"\0" * 32), a.recv(64), a.sendall(b"\0" * 32)), daemon=True).start()
    assert not client_handshake(b, SECRET.encode(), timeout=5)
    a.close()
    b.close()


def test_a_member_with_the_wrong_secret_is_never_accepted(leader):
    """Thespian's own messages are signed with the secret: the leader never
    unpickles the intruder's registration, so the intruder never joins."""
    rt, _, address = leader
    env = {**os.environ, "SLITHER_SECRET": "a-different-secret-0123456789", "PYTHONPATH": os.pathsep.join(sys.path)}
    args = [sys.executable, "-m", "slither.cli", "node", "--join", address, "--name", "intruder", "--join-timeout", "3"]
    p = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 1, p.stdout + p.stderr
    assert "did not accept this member within 3s" in p.stderr and "joined" not in p.stdout
    with pytest.raises(TimeoutError, match="intruder"):
        rt.wait_for_member({"node": "intruder"}, timeout=1)


def test_a_killed_member_loses_no_item(leader):
    """Kill the member mid-run: its batches re-run on the leader's workers, every item once."""
    rt, _, address = leader
    doomed = Member(address, "doomed")
    rt.add_pool("mixed", PoolSpec(size=2, where=[{"node": "leader"}, {"node": "doomed"}], max_restarts=100, max_seconds=1))
    remote = [c.pid for c in rt.pool("mixed").workers.values() if c.remote]
    assert remote
    seen = []
    started = threading.Event()

    def consume():
        def work(xs):
            import time

            time.sleep(0.02)
            return [x * 10 for x in xs]

        for item in rt.dispatch_stream(range(300), work, pool="mixed", batch_size=2, on_error=Retry(max_attempts=10, backoff=0)):
            seen.append(item)
            started.set()

    t = threading.Thread(target=consume)
    t.start()
    assert started.wait(30)
    doomed.kill()
    t.join(60)
    assert not t.is_alive()
    assert [i.payload for i in seen] == [x * 10 for x in range(300)]
    assert len({i.id for i in seen}) == 300


def test_options_are_checked():
    with pytest.raises(ConfigurationError, match="at least 16 bytes"):
        Convention("127.0.0.1:1234", "short")
    with pytest.raises(ConfigurationError, match="HOST:PORT"):
        Convention("nohost", SECRET)
    with pytest.raises(ConfigurationError, match="leads a convention \\(Runtime\\(convention"):
        with slither.Runtime(pools={"x": PoolSpec(size=1, where={"node": "m1"})}):
            pass
    with pytest.raises(ConfigurationError, match="where must be"):
        PoolSpec(size=1, where=[])
    assert SECRET not in repr(Convention("127.0.0.1:1234", SECRET))


def test_a_member_killed_without_shutdown_leaves_no_process(leader):
    """SIGKILL only the `slither node` process: the watchdog on the member ends its actors."""
    _, _, address = leader
    m = Member(address, "orphan-check")
    others = [p for p in m.pids() if p != m.proc.pid]
    assert others  # Thespian's admin, logger, the watchdog
    os.kill(m.proc.pid, signal.SIGKILL)
    m.proc.wait(10)
    m.proc.stdout.close()
    assert not wait_pids_gone(others, timeout=10), "the member's actors outlived it"
    assert os.listdir(m.dir) == [], "the watchdog removes the member's private directory"
    os.rmdir(m.dir)


def _wait_pool(pool, pred, timeout):
    """Wait (on the pool's own condition, no polling) until pred(workers) holds."""
    import time

    deadline = time.monotonic() + timeout
    with pool.lock:
        while not pred(list(pool.workers.values())):
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            pool.changed.wait(left)
    return True


def test_a_member_that_comes_back_rejoins_and_takes_work_again(leader):
    rt, _, address = leader
    m = Member(address, "phoenix")
    try:
        rt.add_pool("rejoin", PoolSpec(size=3, where=[{"node": "leader"}, {"node": "phoenix"}, {"node": "phoenix"}]))
        pool = rt.pool("rejoin")
        first = {c.pid for c in pool.workers.values() if c.remote}
        assert len(first) == 2 and first <= set(m.pids())
        m.kill()  # the whole member, at once
        # Its batches fail over to the leader's worker; nothing is lost.
        out = rt.dispatch(range(30), pid_of, pool="rejoin", batch_size=1, on_error=Retry(max_attempts=5, backoff=0), timeout=20)
        assert [i.payload[0] for i in out] == list(range(30))
        assert {i.payload[1] for i in out}.isdisjoint(first)
        m = Member(address, "phoenix")  # the same name, a new start (a new admin port, too)
        # The leader drops the dead member after three missed check-ins and restarts its
        # workers on the member that came back.
        assert _wait_pool(pool, lambda ws: sum(c.remote for c in ws) == 2, 60), [c.pid for c in pool.workers.values()]
        again = {c.pid for c in pool.workers.values() if c.remote}
        assert again <= set(m.pids())
        out = rt.dispatch(range(60), pid_of, pool="rejoin", batch_size=1, max_in_flight=6)
        assert [i.payload[0] for i in out] == list(range(60))
        assert {i.payload[1] for i in out} & again, "the member that came back takes work again"
    finally:
        m.stop()


JOINER = r"""
import os, sys
import slither
from slither.cluster import Convention

conv = Convention(sys.argv[1], os.environ["SLITHER_SECRET"], join=True, name="joiner", capabilities={"role": "both"})
rt = slither.Runtime(pools={"default": 1}, convention=conv).start()
try:
    print("joined", rt.dispatch([1, 2], lambda xs: [x * 10 for x in xs])[1].payload, flush=True)  # its own pool
    sys.stdin.read()  # until the test closes stdin
finally:
    rt.shutdown()
print("stopped", flush=True)
"""


def test_a_runtime_can_join_a_convention_and_take_the_leaders_workers(leader, tmp_path):
    rt, _, address = leader
    script = tmp_path / "joiner.py"
    script.write_text(JOINER)
    env = {**os.environ, "SLITHER_SECRET": SECRET, "PYTHONPATH": os.pathsep.join(sys.path)}
    p = subprocess.Popen(
        [sys.executable, str(script), address], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert p.stdout.readline().split() == ["joined", "20"]  # accepted by the leader, and its own pool works
        rt.add_pool("on-joiner", PoolSpec(size=1, where={"node": "joiner", "role": "both"}))
        [conn] = rt.pool("on-joiner").workers.values()
        out = rt.dispatch(range(6), pid_of, pool="on-joiner", batch_size=2)
        assert [i.payload for i in out] == [(x, conn.pid) for x in range(6)]
        with open(f"/proc/{conn.pid}/cmdline", "rb") as f:
            assert str(script).encode() in f.read()  # a process of the joining runtime's actor system
        with pytest.raises(ConfigurationError, match="leads a convention"):  # a member's pools stay local
            slither.Runtime(
                pools={"x": PoolSpec(size=1, where={"node": "leader"})}, convention=Convention(address, SECRET, join=True)
            )
    finally:
        p.stdin.close()
        assert p.wait(30) == 0
        assert p.stdout.read().strip() == "stopped"
        p.stdout.close()


def test_a_pool_spreads_over_every_member_that_offers_its_capabilities(leader):
    rt, _, address = leader
    g1 = Member(address, "g1", SECRET, "--capability", "gpu=1")
    try:
        g2 = Member(address, "g2", SECRET, "--capability", "gpu=1")
        try:
            rt.add_pool("gpu", PoolSpec(size=4, where={"gpu": "1"}))
            pids = {c.pid for c in rt.pool("gpu").workers.values()}
            assert all(c.remote for c in rt.pool("gpu").workers.values())  # the leader offers no gpu
            assert len(pids & set(g1.pids())) == 2 and len(pids & set(g2.pids())) == 2
        finally:
            g2.stop()
    finally:
        g1.stop()


NETNS_LEADER = r"""
import os, subprocess, sys, time
import slither
from slither import PoolSpec
from slither.cluster import Convention
from slither.testing.netns import Host

class KV(slither.Store):
    tables = [slither.Table("t")]

    def load(self, tables):
        tables["t"].put("loaded", True)


def read_kv():
    from slither._store import local as _store
    value = KV.get("t", "k")
    return value, "slither-node-" in _store._registry["KV"].path, KV.get("t", "loaded")


ns_b, port = sys.argv[1], sys.argv[2]
conv = Convention(f"10.77.0.1:{port}", os.environ["SLITHER_SECRET"])
rt = slither.Runtime(pools={"default": 1}, stores=[KV], convention=conv, start_timeout=20).start()
node = [sys.executable, "-m", "slither.cli", "node", "--join", f"10.77.0.1:{port}", "--name", "m1", "--network-only"]
member = subprocess.Popen(["ip", "netns", "exec", ns_b, *node, "--listen", "10.77.0.2"], stdout=subprocess.PIPE, text=True)
try:
    print(member.stdout.readline().strip(), flush=True)
    rt.add_pool("both", PoolSpec(size=2, where=[{"node": "leader"}, {"node": "m1"}]))
    out = rt.dispatch(range(40), lambda xs: [(x, os.getpid()) for x in xs], pool="both", batch_size=1, max_in_flight=4)
    assert [i.payload[0] for i in out] == list(range(40))
    remote = sorted(c.remote for c in rt.pool("both").workers.values())
    print("pids", len({i.payload[1] for i in out}), "remote", remote, flush=True)
    rt.add_pool("there", PoolSpec(size=1, where={"node": "m1"}))
    KV.put("t", "k", "v1")
    print("store", rt.dispatch([0], lambda xs: [read_kv() for _ in xs], pool="there")[0].payload, flush=True)
    KV.put("t", "k", "v2")
    KV.reload()  # clears the table: k is gone on every host at once
    print("reloaded", rt.dispatch([0], lambda xs: [read_kv() for _ in xs], pool="there")[0].payload, flush=True)
    # Cut the member's network: no FIN, no RST, the peer just goes silent.
    member_host = Host(ns_b, "10.77.0.2", sys.argv[3])
    member_host.cut()
    retry = slither.Retry(max_attempts=6, backoff=0)
    out = rt.dispatch(range(20), lambda xs: [(x, os.getpid()) for x in xs], pool="both", batch_size=1, timeout=3, on_error=retry)
    print("during the cut", [i.payload[0] for i in out] == list(range(20)), flush=True)
    member_host.restore()
    pool = rt.pool("both")
    deadline, served, ok = time.monotonic() + 60, False, True
    while not served and time.monotonic() < deadline:  # until a worker on the member serves again
        out = rt.dispatch(range(4), lambda xs: [(x, os.getpid()) for x in xs], pool="both", batch_size=1, on_error=retry)
        ok = ok and [i.payload[0] for i in out] == list(range(4))
        with pool.lock:
            served = bool({c.pid for c in pool.workers.values() if c.remote} & {i.payload[1] for i in out})
            if not served:
                pool.changed.wait(1.0)  # a worker joined or left, or a second went by
    back = served
    print("after the cut", ok, back, flush=True)
finally:
    rt.shutdown()
    member.terminate()
    member.wait(20)
"""


def test_a_leader_and_a_member_in_two_network_namespaces(tmp_path):
    """Two 'hosts' with their own addresses (10.77.0.1 and .2) joined by a veth pair."""
    with contextlib.ExitStack() as stack:
        try:
            a, b = stack.enter_context(two_hosts())  # removed on the way out, whatever happens
        except Unavailable as exc:
            pytest.skip(str(exc))
        script = tmp_path / "leader.py"
        script.write_text(NETNS_LEADER)
        out = tmp_path / "out.txt"
        env = {**os.environ, "SLITHER_SECRET": SECRET, "PYTHONPATH": os.pathsep.join(sys.path)}
        with out.open("w") as f:  # a file, not a pipe: a leaked process would hold a pipe open
            p = subprocess.run(
                ["ip", "netns", "exec", a.name, sys.executable, str(script), b.name, "7300", b.link],
                stdout=f,
                stderr=subprocess.STDOUT,
                env=env,
                timeout=90,
            )
        text = out.read_text()
        assert p.returncode == 0, text
        assert "joined 10.77.0.1:7300" in text and "pids 2 remote [False, True]" in text, text
        # the member's worker reads a replica on its own "host", kept current over the veth link
        assert "store ('v1', True, True)" in text and "reloaded (None, True, True)" in text, text
        # its network cut: every item back under Retry; the link back up: the member serves again
        assert "during the cut True" in text and "after the cut True True" in text, text
