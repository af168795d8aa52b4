"""Stores on a convention: workers on a member read a replica on their own node
that the leader's store server keeps current (tests/test_cluster.py has the
member harness). The member runs with --network-only: its workers take the
remote path (TCP to the leader, the node's replica) although it shares the
machine, so these tests check where reads come from, not only what they see."""

import os
import threading

import pytest
from cluster_harness import SECRET, Member, _free_port

import slither
from slither import PoolSpec, Store, Table
from slither._store import replication
from slither.cluster import Convention
from slither.errors import StoreError
from slither.testing import Rendezvous, kill_store_server

pytestmark = [pytest.mark.timeout(120), pytest.mark.chaos]

ROWS = 50


class Gen(Store):
    """Two tables written by one load: every key of both holds the generation
    read from the file named by $SLITHER_TEST_GEN_FILE (or "boom": load fails)."""

    tables = [Table("a"), Table("b"), Table("kv")]

    def load(self, tables):
        with open(os.environ["SLITHER_TEST_GEN_FILE"]) as f:
            text = f.read().strip()
        if text == "boom":
            raise RuntimeError("load refused on purpose")
        for i in range(ROWS):
            tables["a"].put(i, int(text))
            tables["b"].put(i, int(text))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    gen_file = tmp_path_factory.mktemp("gen") / "gen"
    gen_file.write_text("1")
    old = os.environ.get("SLITHER_TEST_GEN_FILE")
    os.environ["SLITHER_TEST_GEN_FILE"] = str(gen_file)  # inherited by the store server
    # Longer than any test's timeout: a write that waits on a dead replica's
    # acknowledgement instead of noticing it is gone fails its test.
    old_ack, replication.REPLICA_ACK_TIMEOUT = replication.REPLICA_ACK_TIMEOUT, 600.0
    port = _free_port()
    rt = slither.Runtime(
        pools={"default": 1}, stores=[Gen], convention=Convention(f"127.0.0.1:{port}", SECRET), start_timeout=20
    ).start()
    member = Member(f"127.0.0.1:{port}", "s1")
    try:
        rt.add_pool("member", PoolSpec(size=1, where={"node": "s1"}))
        yield rt, member, gen_file
    finally:
        rt.shutdown()
        member.stop()
        replication.REPLICA_ACK_TIMEOUT = old_ack
        if old is None:
            os.environ.pop("SLITHER_TEST_GEN_FILE", None)
        else:
            os.environ["SLITHER_TEST_GEN_FILE"] = old


def on_member(rt, fn):
    [item] = rt.dispatch([None], lambda xs: [fn() for _ in xs], pool="member", timeout=60)
    return item.payload


def where_and_what():
    from slither._store import local as _store

    value, version = Gen.get("kv", "k"), Gen.version()  # the first read finds the replica
    e = _store._registry["Gen"]
    return e.path, e.leader_path, value, version


def test_a_member_worker_reads_its_own_replica_and_sees_acknowledged_writes(cluster):
    rt, member, _ = cluster
    assert rt.pool("member").workers[0].remote
    Gen.put("kv", "k", "from the leader")
    path, leader_path, value, version = on_member(rt, where_and_what)
    assert value == "from the leader"
    assert version == Gen.version()
    assert path != leader_path and "slither-node-" in path  # the node's replica, not the leader's files
    for n in range(20):  # each acknowledged write is already on the member when put() returns
        Gen.put("kv", "k", n)
        assert on_member(rt, lambda: Gen.get("kv", "k")) == n


def test_writes_from_a_member_worker_reach_the_leader(cluster):
    rt, _, _ = cluster

    def write():
        Gen.put("kv", "from-member", os.getpid())
        Gen.update("kv", "from-member", lambda v: v + 1)
        return Gen.get("kv", "from-member")  # read back from the replica: already applied

    got = on_member(rt, write)
    assert Gen.get("kv", "from-member") == got
    assert rt.pool("member").workers[0].pid + 1 == got


def test_a_reload_is_all_old_or_all_new_on_the_member(cluster):
    rt, _, gen_file = cluster
    gen_file.write_text("1")
    Gen.reload()
    reloads = 12
    final = 1 + reloads
    rv = Rendezvous()

    def watch(target):
        import time

        seen, deadline, told = [], time.monotonic() + 60, False
        while time.monotonic() < deadline:
            with Gen.snapshot() as s:  # one read transaction over both tables
                a = tuple(v for _, v in s.items("a"))
                b = tuple(v for _, v in s.items("b"))
            seen.append((a, b))
            if not told:
                rv.arrive(os.getpid())  # the reloads start once the member is reading
                told = True
            if set(a) == {target}:
                break
        return seen

    def reload_all():
        rv.wait(timeout=60)
        for g in range(2, final + 1):
            gen_file.write_text(str(g))
            Gen.reload()

    t = threading.Thread(target=reload_all)
    t.start()
    try:
        [item] = rt.dispatch([final], lambda xs: [watch(x) for x in xs], pool="member", timeout=90)
    finally:
        t.join(60)
        rv.close()
    seen = item.payload
    assert seen[-1] == ((final,) * ROWS, (final,) * ROWS), "the member saw the last reload"
    gens = set()
    for a, b in seen:
        assert len(a) == len(b) == ROWS and len(set(a)) == 1 and a == b, f"a torn reload on the member: {a} {b}"
        gens.add(a[0])
    assert gens <= set(range(1, final + 1))


def test_a_failed_load_or_update_never_reaches_the_member(cluster):
    rt, _, gen_file = cluster
    gen_file.write_text("7")
    Gen.reload()
    Gen.put("kv", "n", 1)
    gen_file.write_text("boom")
    with pytest.raises(StoreError, match="load refused"):
        Gen.reload()
    with pytest.raises(StoreError, match="ZeroDivisionError"):
        Gen.update("kv", "n", lambda v: v / 0)
    with pytest.raises(StoreError):
        Gen.update("kv", "n", lambda v: (_ for _ in ()).throw(RuntimeError("no")))
    got = on_member(rt, lambda: ({v for _, v in Gen.items("a")}, Gen.get("kv", "n"), Gen.version()))
    assert got == ({7}, 1, Gen.version())


def test_the_replica_follows_a_restarted_store_server(cluster):
    rt, _, _ = cluster
    Gen.put("kv", "r", "before")
    assert on_member(rt, lambda: Gen.get("kv", "r")) == "before"
    kill_store_server(rt, Gen)
    Gen.put("kv", "r", "after")  # the client retries until the supervisor's new server answers
    # The replica reconnects and resyncs from a snapshot; until then it serves what it had.
    got = on_member(rt, lambda: _wait_for(lambda: Gen.get("kv", "r") == "after"))
    assert got


def _wait_for(cond):
    import time

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.01)  # polls the member's replica: no event reaches a worker when it catches up
    return False


def test_writes_go_on_when_the_member_holding_a_replica_dies(cluster):
    """Last in this module: it kills the module's member."""
    rt, member, _ = cluster
    assert on_member(rt, lambda: Gen.version()) == Gen.version()  # the member reads its replica, in sync
    member.kill()
    for n in range(5):  # the leader's server stops waiting for the dead replica's acknowledgements
        Gen.put("kv", "after", n)
    assert Gen.get("kv", "after") == 4
