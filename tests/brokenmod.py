raise RuntimeError("brokenmod fails on import")


def fn(xs):  # pragma: no cover
    return xs
