"""Replication, as a property: after any sequence of store operations (puts,
bag puts, deletes, updates that succeed or raise, bulk inserts, reloads), a
replica holds exactly the leader's data (every table and the version), as
soon as the write is acknowledged. The store server and a node's replica
service run in this process, over real TCP with the handshake."""

import pickle
import socket

import cloudpickle
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from slither import Store, Table, _keys
from slither._store import replica as _replica
from slither._store import schema
from slither._store import server as store_server

pytestmark = pytest.mark.timeout(300)

SECRET = b"replica-property-secret-0123456789"
TABLES = (("kv", "set"), ("ord", "ordered_set"), ("bag", "bag"))


class Loaded(Store):
    tables = [Table(n, t) for n, t in TABLES]

    def load(self, tables):
        tables["kv"].put("seed", 1)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    init = store_server.StoreInit(
        "Loaded",
        str(tmp_path_factory.mktemp("leader") / "Loaded"),
        str(tmp_path_factory.mktemp("sock") / "s.sock"),
        cloudpickle.dumps(Loaded),
        TABLES,
        False,
        ("127.0.0.1", port),
        SECRET,
    )
    server = store_server._Server(init)
    server.start()
    service = _replica.ReplicaService(SECRET)
    service.start()
    try:
        status, path = service.ensure("Loaded", ("127.0.0.1", port))
        assert status == "ok", path
        yield server, service._replicas[(("127.0.0.1", port), "Loaded")]
    finally:
        service.close()
        server.stop()


def dump(env, dbs):
    out = {}
    with env.begin() as txn:
        for name, db in dbs.items():
            out[name] = [(bytes(k), bytes(v)) for k, v in txn.cursor(db=db) if not (name == b"__meta__" and k.startswith(b"c:"))]
    return out


keys = st.one_of(st.integers(-20, 20), st.text(max_size=3))
values = st.one_of(st.integers(), st.text(max_size=4))


class Replication(RuleBasedStateMachine):
    pair = None

    @initialize()
    def setup(self):
        self.server, self.replica = Replication.pair
        self.seq = 0
        self.op(("reload",))

    def op(self, op):
        self.seq += 1
        return self.server.apply("props", self.seq, op)

    def enc(self, table, key, value=None):
        k = _keys.encode(key, table == "ord")
        return k, pickle.dumps((key, value), protocol=5)

    @rule(table=st.sampled_from(["kv", "ord", "bag"]), key=keys, value=values)
    def put(self, table, key, value):
        k, v = self.enc(table, key, value)
        assert self.op(("put", table, k, v))[0] == "ok"

    @rule(table=st.sampled_from(["kv", "ord", "bag"]), key=keys)
    def delete(self, table, key):
        k, _ = self.enc(table, key)
        assert self.op(("delete", table, k))[0] == "ok"

    @rule(key=keys, fails=st.booleans())
    def update(self, key, fails):
        k, _ = self.enc("kv", key)
        fn = (lambda v: 1 / 0) if fails else (lambda v: [v])
        reply = self.op(("update", "kv", k, key, cloudpickle.dumps(fn)))
        assert reply[0] in ("ok", "err")  # err: missing key, or the function raised (nothing committed)

    @rule(rows=st.lists(st.tuples(keys, values), max_size=6))
    def bulk(self, rows):
        enc = [self.enc("ord", k, v) for k, v in rows]
        assert self.op(("bulk", "ord", enc)) == ("ok", len(rows))

    @rule()
    def reload(self):
        assert self.op(("reload",))[0] == "ok"

    @invariant()
    def replica_holds_what_the_leader_holds(self):
        names = {b"__meta__": self.server.meta, **{schema._dbname(t): db for t, db in self.server.dbs.items()}}
        leader = dump(self.server.env, names)
        replica = dump(self.replica.env, {n: self.replica.dbs[n] for n in names})
        assert replica == leader


def test_a_replica_equals_its_leader_after_any_acknowledged_write(pair):
    Replication.pair = pair
    Replication.TestCase.settings = settings(max_examples=25, stateful_step_count=20, deadline=None)
    Replication.TestCase().runTest()
