"""image_pipeline: 200 generated images made into thumbnails, memory bounded.

50 small, 80 medium, 50 at 1920×1080 and 20 at 3840×2160. Workers generate
each image from its seed (so the caller never holds megapixels), thumbnail
it with Pillow, and report their peak memory. WeightedBatch by pixel count
(≤ 2,000,000 pixels a batch; a 4K image travels alone), max_in_flight 4.
"""

from __future__ import annotations

import os
import random
import resource
import threading

import slither
from slither import WeightedBatch
from slither.examples._common import Checks, Outcome, Timer, gil_status, need, report, run_threads

THUMB = (128, 128)
PEAK_LIMIT_MB = 800


def make_specs(seed: int = 3) -> list[dict]:
    rng = random.Random(seed)
    sizes = [(rng.randint(64, 320), rng.randint(64, 320)) for _ in range(50)]
    sizes += [(rng.randint(640, 1280), rng.randint(480, 960)) for _ in range(80)]
    sizes += [(1920, 1080)] * 50 + [(3840, 2160)] * 20
    specs = [{"id": i, "w": w, "h": h, "seed": rng.randrange(1 << 30)} for i, (w, h) in enumerate(sizes)]
    rng.shuffle(specs)
    return specs


def render(spec: dict):
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (spec["w"], spec["h"]), ((spec["seed"] >> 16) & 255, (spec["seed"] >> 8) & 255, spec["seed"] & 255))
    d = ImageDraw.Draw(img)
    rng = random.Random(spec["seed"])
    for _ in range(20):
        x0, y0 = rng.randrange(spec["w"]), rng.randrange(spec["h"])
        d.rectangle([x0, y0, x0 + spec["w"] // 5, y0 + spec["h"] // 5], fill=(rng.randrange(256), 0, rng.randrange(256)))
    return img


def thumbnails(specs: list[dict]) -> list[dict]:
    """Runs in a worker."""
    out = []
    for s in specs:
        img = render(s)
        img.thumbnail(THUMB)
        out.append({"id": s["id"], "pixels": s["w"] * s["h"], "thumb": img.size, "bytes": len(img.tobytes()), "pid": os.getpid()})
        del img
    return out


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def expected_thumb(w: int, h: int) -> tuple[int, int]:
    from PIL import Image

    img = Image.new("L", (w, h))
    img.thumbnail(THUMB)
    return img.size


THREADS_WIN = (
    "Pillow releases the GIL while it draws and resizes, so threads of one process already run in "
    "parallel here and pay nothing to move images between processes; Slither's worth in this example "
    "is the bounded memory and the crash isolation, not speed"
)


def run(workers: int = 2, progress: bool = False) -> Outcome:
    need("PIL", "pillow")
    checks = Checks("image_pipeline")
    specs = make_specs()
    total_px = sum(s["w"] * s["h"] for s in specs)
    with Timer() as t, slither.Runtime(pools={"default": workers}) as rt:
        out = rt.dispatch(
            specs,
            thumbnails,
            strategy=WeightedBatch(2_000_000, lambda i: i.payload["w"] * i.payload["h"]),
            max_in_flight=4,
            timeout=300,
            progress=progress,
            total=len(specs),
        )
        t.stop()
        report("image_pipeline (slither)", t.elapsed, len(specs), "images")
        print(f"throughput: {total_px / 1e6 / t.elapsed:.1f} megapixels/s")
        peaks = rt.run_on_workers(peak_mb)
    for pid, mb in peaks:
        print(f"worker {pid}: peak RSS {mb:.0f} MB")
    checks.check("all 200 thumbnails produced", len(out) == 200 and not any(i.meta.get("skipped") for i in out))
    checks.check(
        "thumbnails have the expected sizes",
        all(i.payload["thumb"] == expected_thumb(s["w"], s["h"]) for i, s in zip(out, specs)),
    )
    checks.check(
        f"worker memory stayed bounded (peak < {PEAK_LIMIT_MB} MB each)",
        all(mb < PEAK_LIMIT_MB for _, mb in peaks),
        f"max {max(mb for _, mb in peaks):.0f} MB",
    )
    return checks.outcome(t.elapsed)


def baseline(mode: str = "safe", threads: int = 2) -> Outcome:
    """Threads thumbnailing into one shared results list and a shared counter."""
    need("PIL", "pillow")
    checks = Checks(f"image_pipeline baseline ({mode})")
    specs = make_specs()
    results = {}
    count = [0]
    lock = threading.Lock()

    def work(chunk):
        for s in chunk:
            r = thumbnails([s])[0]
            if mode == "unsafe":
                c = count[0]
                results[s["id"]] = r
                count[0] = c + 1
            else:
                with lock:
                    results[s["id"]] = r
                    count[0] += 1

    with Timer() as t:
        used = run_threads(work, specs, threads)
    report(f"image_pipeline baseline {mode}, {used} threads, {gil_status()}", t.elapsed, len(specs), "images")
    print(f"throughput: {sum(s['w'] * s['h'] for s in specs) / 1e6 / t.elapsed:.1f} megapixels/s")
    checks.check("all 200 thumbnails produced and counted", len(results) == 200 and count[0] == 200, f"count={count[0]}")
    return checks.outcome(t.elapsed, used)
