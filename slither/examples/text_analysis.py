"""text_analysis: documents through prepare (inline) → analyze (pool) → classify (router).

5,000 documents of 16–65 words drawn with a seeded RNG from a fixed
36-word vocabulary; a stopword Store read by the workers; each worker keeps
process-local totals, probed at the end and checked to merge to exactly
5,000 documents.
"""

from __future__ import annotations

import random
import threading
from collections import Counter

import slither
from slither import stage
from slither.examples._common import Checks, Timer, gil_status, report

VOCAB = [
    "the",
    "a",
    "of",
    "and",
    "to",
    "in",
    "is",
    "it",
    "good",
    "great",
    "happy",
    "excellent",
    "love",
    "bright",
    "calm",
    "kind",
    "bad",
    "poor",
    "sad",
    "terrible",
    "hate",
    "dark",
    "angry",
    "cruel",
    "data",
    "model",
    "system",
    "process",
    "worker",
    "river",
    "mountain",
    "city",
    "quickly",
    "slowly",
    "beautiful",
    "complicated",
]
STOPWORDS = ["the", "a", "of", "and", "to", "in", "is", "it"]
POSITIVE = {"good", "great", "happy", "excellent", "love", "bright", "calm", "kind", "beautiful"}
NEGATIVE = {"bad", "poor", "sad", "terrible", "hate", "dark", "angry", "cruel"}
N_DOCS = 5000


def make_documents(n: int = N_DOCS, seed: int = 42) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(VOCAB) for _ in range(rng.randint(16, 65))) for _ in range(n)]


class StopwordStore(slither.Store):
    tables = [slither.Table("stopwords")]

    def load(self, tables):
        for w in STOPWORDS:
            tables["stopwords"].put(w, True)


def _syllables(word: str) -> int:
    groups, prev = 0, False
    for ch in word:
        v = ch in "aeiouy"
        if v and not prev:
            groups += 1
        prev = v
    return max(1, groups)


def analyze_one(words: list[str], is_stop) -> dict:
    content = [w for w in words if not is_stop(w)]
    pos = sum(w in POSITIVE for w in content)
    neg = sum(w in NEGATIVE for w in content)
    syll = sum(_syllables(w) for w in words)
    # simplified Flesch reading ease: one sentence per document
    flesch = 206.835 - 1.015 * len(words) - 84.6 * (syll / len(words))
    return {
        "words": len(words),
        "content_words": len(content),
        "sentiment": (pos - neg) / max(1, len(content)),
        "flesch": round(flesch, 3),
        "top": Counter(content).most_common(1)[0][0] if content else None,
    }


_totals = {"docs": 0, "words": 0}


def analyze_batch(docs: list[dict]) -> list[dict]:
    """Pool stage (runs in a worker): reads the stopword Store directly."""
    out = []
    for d in docs:
        r = analyze_one(d["words"], lambda w: StopwordStore.get("stopwords", w, False))
        out.append({**d, **r})
    _totals["docs"] += len(docs)  # process-local, merged by the probe at the end
    _totals["words"] += sum(len(d["words"]) for d in docs)
    return out


def worker_totals() -> dict:
    return dict(_totals)


def reset_totals() -> None:
    _totals.update(docs=0, words=0)


def prepare(item, ctx):
    return {"n": item.id, "words": item.payload.lower().split()}


class TextPipe(slither.Pipe):
    stores = {"stopwords": StopwordStore}
    stages = [
        stage.inline("prepare", handler=prepare),
        stage.pool("analyze", fn="slither.examples.text_analysis:analyze_batch", batch_size=50, max_in_flight=4),
        stage.router(
            "classify",
            routes=[
                (lambda i: i.payload["sentiment"] > 0.15, "positive"),
                (lambda i: i.payload["sentiment"] < -0.15, "negative"),
            ],
        ),
    ]
    outputs = ["positive", "negative"]


def expected(docs: list[str]) -> dict:
    stop = set(STOPWORDS)
    counts = {"positive": 0, "negative": 0, "default": 0}
    for d in docs:
        s = analyze_one(d.lower().split(), stop.__contains__)["sentiment"]
        counts["positive" if s > 0.15 else "negative" if s < -0.15 else "default"] += 1
    return counts


def run(workers: int = 2, progress: bool = False) -> bool:
    checks = Checks("text_analysis")
    docs = make_documents()
    with slither.Runtime(pools={"default": workers}, stores=[StopwordStore]) as rt:
        rt.run_on_workers(reset_totals)
        with Timer() as t:
            out = rt.run_pipe(TextPipe, docs, progress=progress)
        report("text_analysis (slither)", t.elapsed, len(docs), "docs")
        counts = {k: len(v) for k, v in out.items()}
        print(f"outputs: {counts}  skipped: {len(out.skipped)}")
        probes = rt.run_on_workers(worker_totals)
    merged = sum(p["docs"] for _, p in probes)
    checks.check("every document lands in exactly one output", sum(counts.values()) == N_DOCS and not out.skipped)
    checks.check("classification matches a direct computation", counts == expected(docs), str(expected(docs)))
    checks.check("per-worker totals merge to 5,000 documents", merged == N_DOCS, f"{[(pid, p['docs']) for pid, p in probes]}")
    checks.check("word totals merge exactly", sum(p["words"] for _, p in probes) == sum(len(d.split()) for d in docs))
    return checks.passed


def baseline(mode: str = "safe", threads: int = 4) -> bool:
    """The same analysis on threads sharing one totals dict ("unsafe": no lock)."""
    checks = Checks(f"text_analysis baseline ({mode})")
    docs = make_documents()
    stop = set(STOPWORDS)
    totals = {"docs": 0, "words": 0}
    lock = threading.Lock()
    results: list = [None] * len(docs)

    def work(lo, hi):
        for k in range(lo, hi):
            words = docs[k].lower().split()
            results[k] = analyze_one(words, stop.__contains__)
            if mode == "unsafe":
                d = totals["docs"]
                w = totals["words"]
                totals["docs"] = d + 1  # read-modify-write without a lock: a race
                totals["words"] = w + len(words)
            else:
                with lock:
                    totals["docs"] += 1
                    totals["words"] += len(words)

    step = (len(docs) + threads - 1) // threads
    with Timer() as t:
        ts = [threading.Thread(target=work, args=(i, min(len(docs), i + step))) for i in range(0, len(docs), step)]
        for th in ts:
            th.start()
        for th in ts:
            th.join()
    report(f"text_analysis baseline {mode}, {threads} threads, {gil_status()}", t.elapsed, len(docs), "docs")
    checks.check("shared totals count 5,000 documents", totals["docs"] == N_DOCS, f"counted {totals['docs']}")
    counts = Counter(
        "positive" if r["sentiment"] > 0.15 else "negative" if r["sentiment"] < -0.15 else "default" for r in results
    )
    checks.check("classification matches a direct computation", dict(counts) == expected(docs))
    return checks.passed
