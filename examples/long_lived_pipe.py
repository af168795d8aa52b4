"""A long-lived pipe fed from a generator; results consumed as they come."""

import threading

import slither
from slither import stage


def parse(item, ctx):
    level, _, text = item.payload.partition(":")
    return {"level": level, "text": text}


def enrich(records):  # in a worker
    return [{**r, "words": len(r["text"].split())} for r in records]


class LogPipe(slither.Pipe):
    stages = [
        stage.inline("parse", handler=parse),
        stage.pool("enrich", fn=enrich, batch_size=16),
        stage.router("route", routes=[(lambda i: i.payload["level"] == "ERROR", "errors")]),
    ]
    outputs = ["errors"]


def log_lines(n):
    for i in range(n):
        yield f"{'ERROR' if i % 10 == 0 else 'INFO'}:event number {i} happened"


if __name__ == "__main__":
    with slither.Runtime(pools={"default": 2}) as rt:
        handle = rt.start_pipe(LogPipe, max_pending=50)  # submit() blocks when 50 results wait

        def feed():
            for line in log_lines(200):
                handle.submit(line)
            handle.stop(drain=True)  # finish what was submitted, then end results()

        threading.Thread(target=feed).start()
        counts = {}
        for name, item in handle.results(timeout=30):
            counts[name] = counts.get(name, 0) + 1
        print("results per output:", counts, "status:", handle.status()["state"])
