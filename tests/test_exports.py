"""The public surface is exactly what we mean to publish, each with a docstring."""

import inspect

import slither

PUBLIC = {
    "ANY",
    "AutoBatch",
    "BadBatchResult",
    "BatchTimeout",
    "ChildSpec",
    "ConfigurationError",
    "Context",
    "Convention",
    "DispatchError",
    "Executor",
    "Fail",
    "FixedBatch",
    "InlineExecutor",
    "Item",
    "KeyPartition",
    "Pipe",
    "PipeDefinitionError",
    "PipeDown",
    "PipeError",
    "PipeHandle",
    "PipeResult",
    "PoolDown",
    "PoolSpec",
    "RemoteTraceback",
    "Retry",
    "Route",
    "Routed",
    "Runtime",
    "RuntimeNotStarted",
    "SerializationError",
    "Skip",
    "Skipped",
    "SlitherError",
    "Store",
    "StoreError",
    "Strategy",
    "Supervisor",
    "Table",
    "View",
    "ViewNotFound",
    "ViewTimeout",
    "WeightedBatch",
    "WorkerCrashed",
    "WorkerError",
    "call_batch",
    "cluster",
    "dispatch",
    "dispatch_stream",
    "errors",
    "map",
    "run_pipe",
    "runtime",
    "shutdown",
    "stage",
    "start",
    "start_pipe",
    "stream_pipe",
    "telemetry",
    "worker",
    "testing",
}


def test_all_is_exactly_the_public_names():
    assert set(slither.__all__) == PUBLIC
    for name in slither.__all__:
        assert hasattr(slither, name), name


def test_every_public_callable_has_a_docstring():
    for name in slither.__all__:
        obj = getattr(slither, name)
        if inspect.isclass(obj) or inspect.isfunction(obj) or inspect.ismodule(obj):
            assert inspect.getdoc(obj), f"slither.{name} has no docstring"


def test_import_slither_does_not_import_the_test_tools():
    import subprocess
    import sys

    code = (
        "import sys, slither; print('slither.testing' in sys.modules); "
        "slither.testing.Rendezvous; print('slither.testing' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True).stdout.split()
    assert out == ["False", "True"]
