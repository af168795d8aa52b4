"""data_etl: 24,000 rows validated against a hot-reloaded schema Store.

Each row holds a ledger of 300–550 entries (``deposit:120.50;withdraw:...``)
that validation parses entry by entry in pure Python, so threads take turns
on the GIL while the workers run at once. Phase 1 (8,000 rows): schema v1
(name ≥ 1 char, age 0–150, email required, entries well formed). Hot reload
to v2 (name ≥ 2, age 18–120, email ``^[^@]+@[^@]+$``, optional role, the
running balance never below zero). Phase 3 runs *while* another reload (to
v3, same rules as v2 under a new version) happens. Transform rules come from the Store too: rename name →
full_name, cast age to int, default role "user". Every row records the
version of the schema *and* of the transform rules it used, read in one
snapshot: the check is that they always agree (one whole version per row).
"""

from __future__ import annotations

import functools
import json
import os
import random
import re
import tempfile
import threading
from collections import Counter

import slither
from slither import stage
from slither.examples._common import Checks, Outcome, Timer, gil_status, report, run_threads

_V2 = {"name_min": 2, "age_min": 18, "age_max": 120, "email_re": r"^[^@]+@[^@]+$", "roles": ["user", "admin"]}
SCHEMAS = {
    1: {"name_min": 1, "age_min": 0, "age_max": 150, "email_re": None, "roles": None, "ledger_max": 600, "floor": None},
    2: {**_V2, "ledger_max": 500, "floor": 0},
    3: {**_V2, "ledger_max": 500, "floor": 0},
}
ROWS_PER_PHASE = 8_000
LEDGER_ENTRIES = (300, 550)  # per row: the work a worker does on it, against what moving it costs
LEDGER_RE = re.compile(r"^(deposit|withdraw):(\d{1,6})\.(\d\d)$")
TRANSFORMS = {"rename": {"name": "full_name"}, "cast_int": ["age"], "defaults": {"role": "user"}}


class SchemaStore(slither.Store):
    """Which version ``load`` installs is read from a file named by ``version_file``."""

    tables = [slither.Table("schema"), slither.Table("transforms")]
    version_file = ""

    def load(self, tables):
        v = int(json.load(open(self.version_file))["version"]) if self.version_file else 1
        tables["schema"].put("rules", {"version": v, **SCHEMAS[v]})
        tables["transforms"].put("rules", {"version": v, **TRANSFORMS})


def set_version(v: int) -> None:
    with open(SchemaStore.version_file, "w") as f:
        json.dump({"version": v}, f)


def make_rows(n: int, seed: int) -> list[dict]:
    return [dict(r) for r in _rows(n, seed)]


@functools.lru_cache(maxsize=3)
def _rows(n: int, seed: int) -> tuple[dict, ...]:
    rng = random.Random(seed)
    ledgers = [_ledger(rng) for _ in range(400)]
    rows = []
    for _ in range(n):
        rows.append(
            {
                "name": rng.choice(["", "A", "Bo", "Carla", "Dmitri"]),
                "age": str(rng.randint(-5, 160)),
                "email": rng.choice(["x@y.org", "bad-email", "", "a@b"]),
                "ledger": rng.choice(ledgers),
                **({"role": rng.choice(["admin", "user", "guest"])} if rng.random() < 0.5 else {}),
            }
        )
    return tuple(rows)


def _ledger(rng: random.Random) -> str:
    """300–550 entries such as ``deposit:120.50``, ``;``-separated; a few malformed, some overdrawing."""
    out = []
    for _ in range(rng.randint(*LEDGER_ENTRIES)):
        kind = "deposit" if rng.random() < 0.6 else "withdraw"
        out.append(f"{kind}:{rng.randint(0, 900)}.{rng.randint(0, 99):02d}")
    if rng.random() < 0.05:
        out[rng.randrange(len(out))] = "refund:1.5"
    return ";".join(out)


def validate(row: dict, s: dict) -> list[str]:
    errs = []
    if len(row.get("name", "")) < s["name_min"]:
        errs.append("name")
    try:
        age = int(row["age"])
        if not s["age_min"] <= age <= s["age_max"]:
            errs.append("age")
    except (KeyError, ValueError):
        errs.append("age")
    email = row.get("email", "")
    if not email or (s["email_re"] and not re.match(s["email_re"], email)):
        errs.append("email")
    if s["roles"] is not None and "role" in row and row["role"] not in s["roles"]:
        errs.append("role")
    errs += _ledger_errors(row.get("ledger", ""), s)
    return errs


def _ledger_errors(ledger: str, s: dict) -> list[str]:
    """Every entry well formed; under a floor, the running balance never goes below it."""
    entries = ledger.split(";") if ledger else []
    if len(entries) > s["ledger_max"]:
        return ["ledger"]
    balance, errs = 0, []
    for entry in entries:
        m = LEDGER_RE.match(entry)
        if m is None:
            return ["ledger"]
        kind, units, cents = m.groups()
        amount = int(units) * 100 + int(cents)
        balance += amount if kind == "deposit" else -amount
        if s["floor"] is not None and balance < s["floor"] and not errs:
            errs.append("balance")
    return errs


def balance_cents(ledger: str) -> int:
    total = 0
    for entry in ledger.split(";") if ledger else ():
        kind, _, amount = entry.partition(":")
        units, _, cents = amount.partition(".")
        total += (1 if kind == "deposit" else -1) * (int(units) * 100 + int(cents))
    return total


def transform(row: dict, t: dict) -> dict:
    out = {t["rename"].get(k, k): v for k, v in row.items()}
    for k in t["cast_int"]:
        out[k] = int(out[k])
    for k, v in t["defaults"].items():
        out.setdefault(k, v)
    out["balance_cents"] = balance_cents(out.pop("ledger", ""))
    return out


_audit = Counter()


def process_row(row: dict, schema: dict, rules: dict) -> dict:
    """One row's job, wherever it runs: validated, then transformed if valid."""
    errs = validate(row, schema)
    return {
        "schema_version": schema["version"],
        "transform_version": rules["version"],
        "errors": errs,
        "row": transform(row, rules) if not errs else {k: v for k, v in row.items() if k != "ledger"},
    }


def prepare(row: dict) -> dict:
    return {k: (v.strip() if isinstance(v, str) else v) for k, v in row.items()}


def validate_batch(rows: list[dict]) -> list[dict]:
    """Runs in a worker: one snapshot gives schema and transforms of one version."""
    with SchemaStore.snapshot() as s:
        schema = s.get("schema", "rules")
        rules = s.get("transforms", "rules")
    out = []
    for row in rows:
        res = process_row(row, schema, rules)
        _audit["valid" if not res["errors"] else "invalid"] += 1
        out.append(res)
    return out


def audit() -> dict:
    return dict(_audit)


def reset_audit() -> None:
    _audit.clear()


def is_valid(item) -> bool:
    return not item.payload["errors"]


class EtlPipe(slither.Pipe):
    stores = {"schema": SchemaStore}
    stages = [
        stage.inline("prepare", handler=lambda item, ctx: prepare(item.payload)),
        stage.pool("validate", fn="slither.examples.data_etl:validate_batch", batch_size=100, max_in_flight=4),
        stage.router("route", routes=[(is_valid, "valid")]),
    ]
    outputs = ["valid"]


def run(workers: int = 2, progress: bool = False) -> Outcome:
    checks = Checks("data_etl")
    tmp = tempfile.mkdtemp(prefix="slither-etl-")
    SchemaStore.version_file = os.path.join(tmp, "version.json")
    set_version(1)
    phases = [make_rows(ROWS_PER_PHASE, seed) for seed in (1, 2, 3)]
    total = 3 * ROWS_PER_PHASE
    all_results = []
    try:
        with Timer() as t, slither.Runtime(pools={"default": workers}, stores=[SchemaStore]) as rt:
            rt.run_on_workers(reset_audit)
            p1 = rt.run_pipe(EtlPipe, phases[0], progress=progress)
            set_version(2)
            SchemaStore.reload()
            p2 = rt.run_pipe(EtlPipe, phases[1], progress=progress)
            set_version(3)
            reloader = threading.Timer(0.05, SchemaStore.reload)  # lands mid-phase
            reloader.start()
            p3 = rt.run_pipe(EtlPipe, phases[2], progress=progress)
            reloader.join()
            t.stop()
            report("data_etl (slither)", t.elapsed, total, "rows")
            audits = rt.run_on_workers(audit)
        for label, res, allowed in (("phase 1", p1, {1}), ("phase 2", p2, {2}), ("phase 3", p3, {2, 3})):
            rows = res["valid"] + res["default"]
            all_results += rows
            versions = Counter(i.payload["schema_version"] for i in rows)
            print(f"{label}: {len(res['valid'])} valid, {len(res['default'])} invalid, schema versions {dict(versions)}")
            checks.check(
                f"{label}: every row validated under an expected version",
                set(versions) <= allowed and len(rows) == ROWS_PER_PHASE,
            )
        checks.check(
            "every row used one whole schema version (schema and transforms agree)",
            all(i.payload["schema_version"] == i.payload["transform_version"] for i in all_results),
        )
        direct_ok = sum(1 for phase, v in ((phases[0], 1), (phases[1], 2)) for r in phase if not validate(r, SCHEMAS[v]))
        got_ok = len(p1["valid"]) + len(p2["valid"])
        checks.check("phases 1-2 valid counts equal a direct validation", got_ok == direct_ok, f"{got_ok} vs {direct_ok}")
        checks.check(
            "transforms applied (full_name, int age, default role)",
            all(
                "full_name" in i.payload["row"] and isinstance(i.payload["row"]["age"], int) and "role" in i.payload["row"]
                for i in p1["valid"] + p2["valid"] + p3["valid"]
            ),
        )
        merged = Counter()
        for _, a in audits:
            merged.update(a)
        checks.check(
            "per-worker audit counts merge to the totals",
            merged["valid"] == sum(len(p["valid"]) for p in (p1, p2, p3)) and sum(merged.values()) == total,
            str(dict(merged)),
        )
    finally:
        try:
            os.unlink(SchemaStore.version_file)
            os.rmdir(tmp)
        except OSError:
            pass
    return checks.outcome(t.elapsed)


def baseline(mode: str = "safe", threads: int = 2) -> Outcome:
    """``run``'s job on threads: the same three phases, schema versions and reloads (v2
    before phase 2, v3 landing mid-phase 3), the same work per row. The threads read a
    shared schema dict; "unsafe" swaps it field by field, "safe" whole, under a lock."""
    checks = Checks(f"data_etl baseline ({mode})")
    shared = {}
    lock = threading.Lock()

    def install(v):
        if mode == "unsafe":
            shared["schema"] = {"version": v, **SCHEMAS[v]}
            shared["transforms"] = {"version": v, **TRANSFORMS}  # a reader may see the new schema, old rules
        else:
            new = ({"version": v, **SCHEMAS[v]}, {"version": v, **TRANSFORMS})
            with lock:
                shared["schema"], shared["transforms"] = new

    seen: list = []
    results: list = []

    def work(chunk):
        for r in chunk:
            if mode == "unsafe":
                s, t_ = shared["schema"], shared["transforms"]
            else:
                with lock:
                    s, t_ = shared["schema"], shared["transforms"]
            res = process_row(prepare(r), s, t_)
            results.append(res)
            seen.append(res["schema_version"] == res["transform_version"])

    phases = [make_rows(ROWS_PER_PHASE, seed) for seed in (1, 2, 3)]  # the rows ``run`` validates
    used = 0
    with Timer() as t:
        install(1)
        for k, rows in enumerate(phases):
            if k == 1:
                install(2)
            reloader = threading.Timer(0.05, install, args=(3,)) if k == 2 else None  # lands mid-phase, as in run
            if reloader is not None:
                reloader.start()
            used = run_threads(work, rows, threads)
            if reloader is not None:
                reloader.join()
    report(f"data_etl baseline {mode}, {used} threads, {gil_status()}", t.elapsed, len(results), "rows")
    checks.check("every row used one whole schema version", all(seen), f"{seen.count(False)} mixed")
    checks.check("every row processed", len(results) == 3 * ROWS_PER_PHASE)
    return checks.outcome(t.elapsed, used)
