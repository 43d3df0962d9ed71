"""The warm executor (``fl_app/launch/warm_executor.py``): the Flower internals it
calls still have the shape it relies on (this fails loudly on a Flower upgrade that
changes them), and messages of one app sharing a process do not leak into each
other. Its runs (SCAFFOLD's state across rounds, SecAgg+, FedBuff, a killed node or
worker) are the deployment suite's: ``tests/test_deployment.py`` runs on warm
executors."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Context, Message, RecordDict
from flwr.common import FitIns, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.compat.common.recorddict_compat import (
    fitins_to_recorddict,
    recorddict_to_fitres,
)
from flwr.supercore.task_identity import TaskIdentity

from fl_app.launch.warm_executor import WarmExecutor
from fl_app.model import build_model, get_weights
from tests.inprocess import quick_config, run_config_for


def test_the_flower_internals_it_calls_keep_their_shape() -> None:
    """flwr 1.42: run_superexec builds its executor with ``get_executor`` (the
    warm executor replaces it), the Executor protocol's methods, what a launch
    spec holds, the ClientApp task type, and run_clientapp's task functions."""
    import flwr
    from flwr.supercore.constant import TaskType
    from flwr.supercore.superexec.executor import ExecutionSpec, Executor
    from flwr.supernode.runtime import run_clientapp

    assert flwr.__version__.startswith("1.42."), flwr.__version__
    superexec = importlib.import_module("flwr.supercore.superexec.run_superexec")
    assert "get_executor(" in inspect.getsource(superexec.run_superexec)
    protocol = {
        name
        for name, _ in inspect.getmembers(Executor, inspect.isfunction)
        if not name.startswith("_")
    }
    assert protocol == {
        "get_eligible_capacity",
        "wait_for_capacity",
        "launch",
        "reconcile",
        "close",
    }
    assert protocol <= set(dir(WarmExecutor))
    fields = {f.name for f in dataclasses.fields(ExecutionSpec)}
    assert {"task_type", "token", "fab_hash"} <= fields
    assert TaskType.CLIENT_APP
    signatures = {
        "pull_task_input": ["client"],
        "push_message": ["client", "message", "context"],
        "push_task_output": ["client", "context", "sub_status", "details"],
    }
    for name, params in signatures.items():
        assert list(inspect.signature(getattr(run_clientapp, name)).parameters) == (
            params
        ), name


def _fit(run_config: dict[str, Any], partition: int, state: RecordDict) -> list:
    """One fit message for ``partition`` through the app's ClientApp object, in this
    process, as a warm worker runs it; the reply's arrays."""
    from fl_app.client_app import app

    weights = get_weights(build_model("2nn", seed=42))
    ins = FitIns(
        ndarrays_to_parameters(weights),
        {
            "server-round": 1,
            "learning-rate": 0.05,
            "local-epochs": 1,
            "batch-size": 10,
            "seed": 42,
            "partition-id": partition,
            "num-partitions": 10,
        },
    )
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    message = Message(fitins_to_recorddict(ins, keep_input=True), 7, "train")
    context = Context(
        run_id=1, node_id=7, node_config={}, state=state, run_config=run_config
    )
    reply = app(message, context)
    assert reply.has_content(), reply.error
    return parameters_to_ndarrays(recorddict_to_fitres(reply.content, False).parameters)


def test_messages_sharing_a_process_do_not_leak_into_each_other(
    mnist_dir: Path, tmp_path: Path
) -> None:
    """Top-k with error feedback keeps each client's residual in its Context.state:
    in one process, partition 3's reply is the same whether partition 5 (another
    context) went first or not; partition 3's second message, with the state its
    first left, differs (the residual is added), and so proves the state is used."""
    run_config = run_config_for(
        quick_config(mnist_dir, tmp_path, 1, **{"compression.scheme": "topk"})
    )
    alone = _fit(run_config, 3, RecordDict())
    _fit(run_config, 5, RecordDict())
    state = RecordDict()
    after = _fit(run_config, 3, state)
    for a, b in zip(alone, after, strict=True):
        np.testing.assert_array_equal(a, b)
    again = _fit(run_config, 3, state)
    assert any(not np.array_equal(a, b) for a, b in zip(after, again, strict=True)), (
        "the residual in Context.state changed nothing"
    )
