"""text_analysis: documents through prepare (inline) → analyze (pool) → classify (router).

12,500 documents of 160–400 words drawn with a seeded RNG from a fixed
36-word vocabulary. Tokenizing and scoring them is pure Python, so threads
of one process take turns on the GIL while two workers really run at once.
The workers read a stopword Store; each keeps process-local totals, probed
at the end and checked to merge to exactly 12,500 documents. Long documents:
the work a worker does on one, against what moving it costs.
"""

from __future__ import annotations

import functools
import random
import threading
from collections import Counter

import slither
from slither import stage
from slither.examples._common import Checks, Outcome, Timer, gil_status, report

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
N_DOCS = 12_500


@functools.lru_cache(maxsize=2)
def _documents(n: int, seed: int) -> tuple[str, ...]:
    rng = random.Random(seed)
    return tuple(" ".join(rng.choices(VOCAB, k=rng.randint(160, 400))) for _ in range(n))


def make_documents(n: int = N_DOCS, seed: int = 42) -> list[str]:
    return list(_documents(n, seed))


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


_SUFFIXES = ("ingly", "edly", "ing", "ful", "ly", "ed", "es", "s")


def stem(word: str) -> str:
    """A crude suffix stripper, enough to group inflections: pure Python, like most tokenizers."""
    for suffix in _SUFFIXES:
        if len(word) > len(suffix) + 2 and word.endswith(suffix):
            return word[: -len(suffix)]
    return word


def analyze_one(words: list[str], is_stop) -> dict:
    content = [w for w in words if not is_stop(w)]
    stems = [stem(w) for w in content]
    pos = sum(w in POSITIVE for w in content)
    neg = sum(w in NEGATIVE for w in content)
    syll = sum(_syllables(w) for w in words)
    pairs = Counter(zip(stems, stems[1:]))
    # simplified Flesch reading ease: one sentence per document
    flesch = 206.835 - 1.015 * len(words) - 84.6 * (syll / len(words))
    return {
        "words": len(words),
        "content_words": len(content),
        "sentiment": (pos - neg) / max(1, len(content)),
        "flesch": round(flesch, 3),
        "top": Counter(stems).most_common(1)[0][0] if stems else None,
        "top_pair": " ".join(pairs.most_common(1)[0][0]) if pairs else None,
    }


_totals = {"docs": 0, "words": 0}


def analyze_batch(docs: list[dict]) -> list[dict]:
    """Pool stage (runs in a worker): reads the stopword Store directly."""
    tokenized = [(d["n"], d["text"].lower().split()) for d in docs]
    distinct = {w for _, words in tokenized for w in words}
    # one Store read per distinct word of the batch, then C-speed set lookups
    stop = {w for w in distinct if StopwordStore.get("stopwords", w, False)}
    out = [{"n": n, **analyze_one(words, stop.__contains__)} for n, words in tokenized]
    words_total = sum(len(words) for _, words in tokenized)
    _totals["docs"] += len(docs)  # process-local, merged by the probe at the end
    _totals["words"] += words_total
    return out


def worker_totals() -> dict:
    return dict(_totals)


def reset_totals() -> None:
    _totals.update(docs=0, words=0)


def prepare(item, ctx):
    return {"n": item.id, "text": item.payload.strip()}


class TextPipe(slither.Pipe):
    stores = {"stopwords": StopwordStore}
    stages = [
        stage.inline("prepare", handler=prepare),
        stage.pool("analyze", fn="slither.examples.text_analysis:analyze_batch", batch_size=100, max_in_flight=4),
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
    """How many of ``docs`` each output should get, computed directly in this process."""
    return dict(_expected(tuple(docs)))


@functools.lru_cache(maxsize=2)  # one computation shared by run() and both baselines: seconds each
def _expected(docs: tuple[str, ...]) -> dict:
    stop = set(STOPWORDS)
    counts = {"positive": 0, "negative": 0, "default": 0}
    for d in docs:
        s = analyze_one(d.lower().split(), stop.__contains__)["sentiment"]
        counts["positive" if s > 0.15 else "negative" if s < -0.15 else "default"] += 1
    return counts


def run(workers: int = 2, progress: bool = False) -> Outcome:
    checks = Checks("text_analysis")
    docs = make_documents()
    with Timer() as t:  # the runtime's start is part of what Slither costs
        with slither.Runtime(pools={"default": workers}, stores=[StopwordStore]) as rt:
            rt.run_on_workers(reset_totals)
            out = rt.run_pipe(TextPipe, docs, progress=progress)
            t.stop()  # the checks' probes are not part of the work
            probes = rt.run_on_workers(worker_totals)
    report("text_analysis (slither)", t.elapsed, len(docs), "docs")
    counts = {k: len(v) for k, v in out.items()}
    print(f"outputs: {counts}  skipped: {len(out.skipped)}")
    merged = sum(p["docs"] for _, p in probes)
    checks.check("every document lands in exactly one output", sum(counts.values()) == N_DOCS and not out.skipped)
    direct = expected(docs)
    checks.check("classification matches a direct computation", counts == direct, str(direct))
    checks.check(
        f"per-worker totals merge to {N_DOCS:,} documents", merged == N_DOCS, f"{[(pid, p['docs']) for pid, p in probes]}"
    )
    checks.check("word totals merge exactly", sum(p["words"] for _, p in probes) == sum(len(d.split()) for d in docs))
    return checks.outcome(t.elapsed)


def baseline(mode: str = "safe", threads: int = 2) -> Outcome:
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
    report(f"text_analysis baseline {mode}, {len(ts)} threads, {gil_status()}", t.elapsed, len(docs), "docs")
    checks.check(f"shared totals count {N_DOCS:,} documents", totals["docs"] == N_DOCS, f"counted {totals['docs']}")
    counts = Counter(
        "positive" if r["sentiment"] > 0.15 else "negative" if r["sentiment"] < -0.15 else "default" for r in results
    )
    checks.check("classification matches a direct computation", dict(counts) == expected(docs))
    return checks.outcome(t.elapsed, len(ts))
