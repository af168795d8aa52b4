"""ml_scoring: two sessions train and score their own models, concurrently.

Each session trains a scikit-learn logistic regression on 2,000 samples
whose class centres differ per session, in a worker (session affinity keeps
the model in that worker's memory), then scores 2,000 records through
enrich (feature-cache Store) → featurize → predict (pool, affinity) → route
by confidence (≥ 0.9 high, < 0.6 low). Both sessions run at the same time.
"""

from __future__ import annotations

import os
import random
import threading

import slither
from slither import stage
from slither.examples._common import Checks, Outcome, Timer, gil_status, need, report

CENTRES = {"alpha": ((-2.0, -2.0), (2.0, 2.0)), "beta": ((4.0, -4.0), (-4.0, 4.0))}


def make_samples(session: str, n: int, seed: int) -> tuple[list, list]:
    rng = random.Random(seed)
    c0, c1 = CENTRES[session]
    xs, ys = [], []
    for _ in range(n):
        y = rng.randint(0, 1)
        c = c1 if y else c0
        xs.append([rng.gauss(c[0], 1.2), rng.gauss(c[1], 1.2)])
        ys.append(y)
    return xs, ys


class FeatureCache(slither.Store):
    """Per-user offsets, a write-through cache read by the enrich stage."""

    tables = [slither.Table("features")]

    def load(self, tables):
        for u in range(100):
            tables["features"].put(f"user:{u}", {"offset": (u % 5) * 0.01})


_models: dict = {}


def train(batch: list) -> list:
    """Runs in a worker, once per session: the model stays in this process."""
    from sklearn.linear_model import LogisticRegression

    ctx = slither.worker.context()
    xs, ys = batch[0]
    model = LogisticRegression().fit(xs, ys)
    _models[ctx.session_id] = (model, os.getpid())
    return [{"session": ctx.session_id, "pid": os.getpid(), "score": float(model.score(xs, ys))}]


def predict(records: list) -> list:
    ctx = slither.worker.context()
    if ctx.session_id not in _models:
        raise LookupError(f"no model for session {ctx.session_id!r} in worker {os.getpid()}")
    model, _ = _models[ctx.session_id]
    probs = model.predict_proba([r["x"] for r in records])
    return [
        {**r, "p": float(max(p)), "label": int(p.argmax()), "pid": os.getpid(), "models_here": sorted(_models)}
        for r, p in zip(records, probs)
    ]


def enrich(item, ctx):
    feats = FeatureCache.get("features", item.payload["user"], {"offset": 0.0})
    return {**item.payload, "offset": feats["offset"]}


def featurize(item, ctx):
    p = item.payload
    return {**p, "x": [p["raw"][0] + p["offset"], p["raw"][1] - p["offset"]]}


class ScoringPipe(slither.Pipe):
    stores = {"features": FeatureCache}
    stages = [
        stage.inline("enrich", handler=enrich),
        stage.inline("featurize", handler=featurize),
        stage.pool("predict", fn="slither.examples.ml_scoring:predict", batch_size=100, affinity="session"),
        stage.router("route", routes=[(lambda i: i.payload["p"] >= 0.9, "high"), (lambda i: i.payload["p"] < 0.6, "low")]),
    ]
    outputs = ["high", "low"]


def _session(rt, name, seed, out, progress=False):
    xs, ys = make_samples(name, 2000, seed)
    ctx = slither.Context(session_id=f"session-{name}")
    trained = rt.call_batch([(xs, ys)], train, affinity="session", context=ctx, timeout=120)[0].payload
    rx, ry = make_samples(name, 2000, seed + 100)
    records = [{"user": f"user:{i % 100}", "raw": x, "truth": y} for i, (x, y) in enumerate(zip(rx, ry))]
    res = rt.run_pipe(ScoringPipe, records, session_id=ctx.session_id, progress=progress)
    out[name] = (trained, res)


THREADS_WIN = (
    "scikit-learn and numpy do their arithmetic in C with the GIL released, and 4,000 records are "
    "milliseconds of it, so threads win on time; what they cannot do is keep two sessions' models apart "
    "(see the state isolation finding)"
)


def run(workers: int = 2, progress: bool = False) -> Outcome:
    need("sklearn", "scikit-learn")
    need("numpy")
    checks = Checks("ml_scoring")
    out: dict = {}
    with Timer() as t, slither.Runtime(pools={"default": max(2, workers)}, stores=[FeatureCache]) as rt:
        ts = [threading.Thread(target=_session, args=(rt, n, s, out, progress)) for n, s in (("alpha", 1), ("beta", 2))]
        for th in ts:
            th.start()
        for th in ts:
            th.join()
        t.stop()
        report("ml_scoring (slither, 2 sessions)", t.elapsed, 4000, "records")
    accuracy = {}
    for name in ("alpha", "beta"):
        if name not in out:
            checks.check(f"session {name} completed", False)
            continue
        trained, res = out[name]
        items = res["high"] + res["low"] + res["default"]
        acc = accuracy[name] = sum(i.payload["label"] == i.payload["truth"] for i in items) / max(1, len(items))
        print(
            f"{name}: trained in pid {trained['pid']} (train acc {trained['score']:.3f}); "
            f"high={len(res['high'])} review={len(res['default'])} low={len(res['low'])} accuracy={acc:.3f}"
        )
        checks.check(f"{name}: all 2,000 records scored", len(items) == 2000 and not res.skipped)
        checks.check(f"{name}: scored in the worker that trained it", {i.payload["pid"] for i in items} == {trained["pid"]})
        checks.check(f"{name}: its own model fits its data (accuracy > 0.9)", acc > 0.9, f"{acc:.3f}")
    if len(out) == 2:
        pa, pb = out["alpha"][0]["pid"], out["beta"][0]["pid"]
        checks.check(
            "sessions stayed isolated (different workers, each model only where it was trained)",
            pa != pb
            and all(
                i.payload["models_here"] == ["session-alpha"]
                for i in out["alpha"][1]["default"] + out["alpha"][1]["high"] + out["alpha"][1]["low"]
            ),
        )
    finding = "state isolation, slither: " + ", ".join(
        f"{n} scored with its own model (accuracy {a:.2f})" for n, a in accuracy.items()
    )
    return checks.outcome(t.elapsed, findings=(finding,))


def baseline(mode: str = "safe", threads: int = 2) -> Outcome:
    """Two sessions in two threads (whatever ``threads`` says: one per session) sharing one
    "current model" slot ("unsafe") or keeping their own ("safe")."""
    need("sklearn", "scikit-learn")
    from sklearn.linear_model import LogisticRegression

    checks = Checks(f"ml_scoring baseline ({mode})")
    shared: dict = {}
    accs: dict = {}
    barrier = threading.Barrier(2)

    def session(name, seed):
        xs, ys = make_samples(name, 2000, seed)
        model = LogisticRegression().fit(xs, ys)
        if mode == "unsafe":
            shared["model"] = model  # one global slot, as module state shared by threads is
            barrier.wait()  # both sessions have trained: the slot holds whichever came last
            model = shared["model"]
        rx, ry = make_samples(name, 2000, seed + 100)
        pred = model.predict(rx)
        accs[name] = sum(int(p) == y for p, y in zip(pred, ry)) / len(ry)

    with Timer() as t:
        ts = [threading.Thread(target=session, args=(n, s)) for n, s in (("alpha", 1), ("beta", 2))]
        for th in ts:
            th.start()
        for th in ts:
            th.join()
    report(f"ml_scoring baseline {mode}, 2 threads, {gil_status()}", t.elapsed, 4000, "records")
    for name, acc in accs.items():
        checks.check(f"{name}: scored with its own model (accuracy > 0.9)", acc > 0.9, f"{acc:.3f}")
    slot = "sharing one model slot" if mode == "unsafe" else "each with its own model"
    own, other = "scored with its own model", "scored with the other session's model"
    finding = f"state isolation, threads {slot}: " + ", ".join(
        f"{n} {own if a > 0.9 else other} (accuracy {a:.2f})" for n, a in sorted(accs.items())
    )
    return checks.outcome(t.elapsed, 2, findings=(finding,))
