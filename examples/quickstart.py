"""Quickstart: fan out work, survive a crash, read shared state from workers."""

import os

import slither


class Prices(slither.Store):
    tables = [slither.Table("prices")]

    def load(self, tables):
        tables["prices"].put("apple", 1.25)
        tables["prices"].put("pear", 0.75)


def total(orders):
    """Runs in a worker: reads the store directly, no round trip."""
    return [qty * Prices.get("prices", fruit, 0.0) for fruit, qty in orders]


def flaky(xs):
    if 13 in xs:
        os._exit(1)  # simulate a segfault in a C extension
    return xs


if __name__ == "__main__":
    with slither.Runtime(pools={"default": 2}, stores=[Prices]) as rt:
        out = rt.dispatch([("apple", 4), ("pear", 2), ("kiwi", 1)], total)
        print("totals:", [i.payload for i in out])

        out = rt.dispatch(range(20), flaky, batch_size=4, on_error="skip")
        print("skipped after a worker crash:", [i.payload for i in out if i.meta.get("skipped")])
        print("the pool is whole again:", len(rt.dispatch(range(8), flaky, batch_size=2)) == 8)
