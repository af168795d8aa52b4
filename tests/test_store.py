"""Store: semantics against a model, concurrency, reload atomicity, crash safety."""

import os
import threading

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from storemod import KV, TwoTables

import slither
from slither import ANY, Store, StoreError, Table, ViewNotFound, ViewTimeout
from slither.testing import kill_store_server, running_runtime

pytestmark = pytest.mark.timeout(120)


class Counter(Store):
    tables = [Table("c")]

    def load(self, tables):
        tables["c"].put("n", 0)


class Flaky(Store):
    tables = [Table("t")]

    def load(self, tables):
        if os.path.exists(self.marker()):
            raise RuntimeError("load refused")
        tables["t"].put("k", "old")

    @staticmethod
    def marker():
        return f"/tmp/slither-test-flaky-load-{os.getuid()}"


@pytest.fixture(scope="module")
def srt():
    with running_runtime(pools={"default": 2}, stores=[KV, TwoTables, Counter, Flaky]) as rt:
        yield rt


keys = st.one_of(st.integers(-50, 50), st.text(max_size=4), st.tuples(st.integers(0, 3), st.text(max_size=2)))
values = st.one_of(st.integers(), st.text(max_size=5), st.lists(st.integers(), max_size=3))


class StoreModel(RuleBasedStateMachine):
    """Random puts, deletes, updates, bulk inserts and reloads vs a dict model."""

    @initialize()
    def setup(self):
        KV.reload()
        self.model = {"kv": {"seed": 1}, "ord": {}, "bag": {}}

    @rule(table=st.sampled_from(["kv", "ord"]), k=keys, v=values)
    def put(self, table, k, v):
        KV.put(table, k, v)
        self.model[table][k] = v

    @rule(k=keys, v=st.integers(0, 3))
    def bag_put(self, k, v):
        KV.put("bag", k, v)
        vals = self.model["bag"].setdefault(k, [])
        if v not in vals:
            vals.append(v)

    @rule(table=st.sampled_from(["kv", "ord", "bag"]), k=keys)
    def delete(self, table, k):
        KV.delete(table, k)
        self.model[table].pop(k, None)

    @rule(k=keys)
    def update(self, k):
        if k in self.model["kv"]:
            new = KV.update("kv", k, lambda v: [v])
            self.model["kv"][k] = [self.model["kv"][k]]
            assert new == self.model["kv"][k]
        else:
            with pytest.raises(KeyError):
                KV.update("kv", k, lambda v: v)

    @rule(rows=st.lists(st.tuples(keys, values), max_size=5))
    def bulk(self, rows):
        KV.bulk_insert("ord", rows)
        for k, v in rows:
            self.model["ord"][k] = v

    @rule()
    def reload(self):
        KV.reload()
        self.model = {"kv": {"seed": 1}, "ord": {}, "bag": {}}

    @invariant()
    def same(self):
        for t in ("kv", "ord"):
            assert dict(KV.items(t)) == self.model[t]
            assert KV.size(t) == len(self.model[t])
        ord_keys = [k for k, _ in KV.items("ord")]
        for kind in (int, str, tuple):  # Python orders within a type; types group by tag
            same = [k for k in ord_keys if type(k) is kind]
            assert same == sorted(same)
        for k, vals in self.model["bag"].items():
            assert KV.get("bag", k) == vals


@pytest.mark.timeout(300)
def test_store_matches_dict_model(srt):
    StoreModel.TestCase.settings = settings(max_examples=15, stateful_step_count=15, deadline=None)
    StoreModel.TestCase().runTest()


def test_ordered_set_iterates_in_python_order(srt):
    KV.reload()
    ks = [10, 2, -3, 2.5, 100, 0]
    KV.bulk_insert("ord", [(k, str(k)) for k in ks])
    assert [k for k, _ in KV.items("ord")] == sorted(ks)
    KV.reload()
    words = ["b", "a", "ab", "", "a\x00", "B"]
    KV.bulk_insert("ord", [(w, 1) for w in words])
    assert [k for k, _ in KV.items("ord")] == sorted(words)
    KV.reload()
    tups = [(1, "b"), (1,), (0, "z"), (1, "a", 2), (2,)]
    KV.bulk_insert("ord", [(t, 1) for t in tups])
    assert [k for k, _ in KV.items("ord")] == sorted(tups)


def test_reads_queries(srt):
    KV.reload()
    KV.bulk_insert("kv", [(f"u{i}", {"tier": "gold" if i % 2 else "silver", "n": i}) for i in range(6)])
    gold = KV.match("kv", (ANY, {"tier": "gold"}))
    assert sorted(k for k, _ in gold) == ["u1", "u3", "u5"]
    assert KV.match("kv", ("u2", ANY)) == [("u2", {"tier": "silver", "n": 2})]
    assert len(KV.select("kv", lambda k, v: isinstance(v, dict) and v["n"] > 3)) == 2
    assert KV.fold("kv", 0, lambda kv, acc: acc + (kv[1]["n"] if isinstance(kv[1], dict) else 0)) == 15
    assert KV.fetch("kv", "u0")["n"] == 0
    with pytest.raises(KeyError):
        KV.fetch("kv", "nope")
    assert KV.get("kv", "nope", "dflt") == "dflt"
    KV.delete("kv", "nope")  # not an error


def test_four_threads_updating_one_key_lose_nothing(srt):
    Counter.reload()

    def bump():
        for _ in range(50):
            Counter.update("c", "n", lambda v: v + 1)

    ts = [threading.Thread(target=bump) for _ in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert Counter.get("c", "n") == 200


def test_worker_reads_what_the_caller_wrote(srt):
    KV.put("kv", "from-caller", {"x": 1})
    out = srt.dispatch(["from-caller", "seed"], lambda ks: [KV.get("kv", k) for k in ks])
    assert [i.payload for i in out] == [{"x": 1}, 1]


def test_worker_writes_are_seen_by_the_caller(srt):
    srt.dispatch(range(10), lambda xs: [KV.put("kv", f"w{x}", x) for x in xs], batch_size=3)
    assert [KV.get("kv", f"w{x}") for x in range(10)] == list(range(10))


def test_readers_in_workers_never_see_a_mix_during_reloads(srt):
    stop = threading.Event()

    def reloader():
        while not stop.is_set():
            TwoTables.reload()

    def probe(xs):
        # Read until this worker has seen 4 different loads (reloads happened while it
        # read), however fast or slow the reloader runs; the cap only bounds a broken run.
        bad, seen = 0, set()
        for _ in range(200_000):
            with TwoTables.snapshot() as s:
                a_vals = {v for _, v in s.items("a")}
                b = s.get("b", "stamp")
            if a_vals != {b}:
                bad += 1
            seen.add(b)
            if len(seen) >= 4:
                break
        return [(bad, len(seen)) for _ in xs]

    t = threading.Thread(target=reloader)
    t.start()
    try:
        out = srt.dispatch(range(8), probe, batch_size=1)
    finally:
        stop.set()
        t.join()
    assert all(seen >= 4 for _, seen in (i.payload for i in out)), "a worker read through fewer than 3 reloads"
    assert sum(bad for bad, _ in (i.payload for i in out)) == 0


def test_failing_load_keeps_old_data(srt):
    Flaky.reload()
    assert Flaky.get("t", "k") == "old"
    Flaky.put("t", "extra", 1)
    marker = Flaky.marker()
    open(marker, "w").close()
    try:
        with pytest.raises(StoreError, match="load refused"):
            Flaky.reload()
    finally:
        os.unlink(marker)
    assert Flaky.get("t", "extra") == 1 and Flaky.get("t", "k") == "old"


@pytest.mark.chaos
def test_killed_store_server_loses_no_acknowledged_write(srt):
    Counter.reload()
    acked = []
    halfway = threading.Event()

    def writer():
        for i in range(200):
            KV.put("kv", f"k{i}", i)
            Counter.update("c", "n", lambda v: v + 1)
            acked.append(i)
            if i == 60:
                halfway.set()

    t = threading.Thread(target=writer)
    t.start()
    assert halfway.wait(30)
    old = kill_store_server(srt, KV)
    t.join(60)
    assert acked == list(range(200))
    assert all(KV.get("kv", f"k{i}") == i for i in acked)
    assert Counter.get("c", "n") == 200  # exactly once, despite retries across the crash
    assert srt._stores["KV"].server_pid() != old


def test_bad_input_names_the_problem_and_changes_nothing(srt):
    before = KV.items("kv")
    with pytest.raises(StoreError, match="no table 'nope'"):
        KV.put("nope", "k", 1)
    with pytest.raises(StoreError, match="cannot be pickled"):
        KV.put("kv", "k", threading.Lock())
    with pytest.raises(StoreError, match="cannot be ordered"):
        KV.put("ord", object(), 1)
    with pytest.raises(StoreError, match="bulk_insert records"):
        KV.bulk_insert("kv", [("a", 1), "oops"])
    assert KV.items("kv") == before


def test_store_not_started():
    class Lonely(Store):
        tables = [Table("t")]

    with pytest.raises(StoreError, match="not started"):
        Lonely.put("t", 1, 1)
    with pytest.raises(StoreError, match="not started"):
        Lonely.get("t", 1)


def test_views_scope_timeout_and_worker_calls(srt):
    KV.put("kv", "v1", "hello")
    assert KV.view("kv_lookup", {"key": "v1"}) == {"value": "hello"}
    with pytest.raises(ViewNotFound, match="session-scoped"):
        KV.view("kv_session", {"key": "v1"})
    ctx = slither.Context(stores={"kv": "KV"})
    assert KV.view("kv_session", {"key": "v1"}, ctx) == {"value": "hello"}
    with pytest.raises(ViewTimeout):
        KV.view("kv_slow", {"sleep": 2})
    with pytest.raises(ViewNotFound):
        slither.worker.view("no_such_view", {})
    out = srt.dispatch([1], lambda xs: [slither.worker.view("kv_lookup", {"key": "v1"})])
    assert out[0].payload == {"value": "hello"}


def test_store_defined_in_a_function_works_in_workers_and_server():
    def make():
        class Local(Store):
            tables = [Table("t", "ordered_set")]

            def load(self, tables):
                for i in range(5):
                    tables["t"].put(i, i * i)

        return Local

    Local = make()
    with running_runtime(pools={"default": 1}, stores=[Local]) as rt:
        out = rt.dispatch([3], lambda xs: [Local.get("t", x) for x in xs])
        assert out[0].payload == 9


def test_persistent_store_survives_restart_and_loads_once(tmp_path):
    class Durable(Store):
        tables = [Table("t")]
        persistent = True

        def load(self, tables):
            tables["t"].put("loads", 1)

    with running_runtime(pools={"default": 1}, stores=[Durable], data_dir=tmp_path):
        Durable.put("t", "written", 42)
        Durable.update("t", "loads", lambda v: v + 10)
    with running_runtime(pools={"default": 1}, stores=[Durable], data_dir=tmp_path):
        assert Durable.get("t", "written") == 42
        assert Durable.get("t", "loads") == 11  # load did not run again on a non-empty store


def test_persistent_without_data_dir_is_a_configuration_error():
    class P(Store):
        tables = [Table("t")]
        persistent = True

    with pytest.raises(slither.ConfigurationError, match="data_dir"):
        slither.Runtime(pools={"default": 1}, stores=[P]).start()


def test_store_telemetry(srt):
    got = []
    slither.telemetry.attach(
        "st",
        [("slither", "store", "write"), ("slither", "store", "reload", "stop")],
        lambda e, m, md: got.append((e, md.get("store"))),
    )
    try:
        KV.put("kv", "t", 1)
        srt.dispatch([1], lambda xs: [KV.put("kv", "tw", 1)])
        KV.reload()
    finally:
        slither.telemetry.detach("st")
    assert got.count((("slither", "store", "write"), "KV")) == 2
    assert (("slither", "store", "reload", "stop"), "KV") in got
