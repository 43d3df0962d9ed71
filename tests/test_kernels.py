"""``reproducible = true``: the ClientApp pins the CPU kernels of its process before
torch loads, whatever the environment it was started with, and a process that
loaded torch first is refused, naming the key.

Each case handles one real fit message through the ClientApp in a fresh interpreter
(as a ``flwr-clientapp`` process or a new Ray actor does): the update's bytes, ATen's
dispatch level and the variables it ran with are compared. (That the pin changes
the numbers at all is measured by ``scripts/kernel_reproducibility.py``: a test
would fail on a CPU whose default kernels are the pinned ones.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fl_app.config import ConfigError, RunConfig
from fl_app.kernels import PINNED_KERNELS, pin_kernels, unpinned
from fl_app.model import build_model, get_weights

# Another CPU, as far as this one can pretend: every library told to use AVX2.
AS_AVX2 = {
    "MKL_CBWR": "AVX2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "ATEN_CPU_CAPABILITY": "avx2",
}

_ONE_FIT = """
import hashlib, json, os, sys
import numpy as np
from flwr.app import Context, Message, RecordDict
from flwr.common import FitIns, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.compat.common.recorddict_compat import (
    fitins_to_recorddict, recorddict_to_fitres,
)
from flwr.supercore.task_identity import TaskIdentity

weights_file, run_config_file = sys.argv[1:]
with np.load(weights_file) as stored:
    weights = [stored[name] for name in stored.files]
run_config = json.loads(open(run_config_file).read())
from fl_app.client_app import app

ins = FitIns(
    ndarrays_to_parameters(weights),
    {"server-round": 1, "learning-rate": 0.1, "local-epochs": 1, "batch-size": 10,
     "seed": 42, "partition-id": 1, "num-partitions": 4},
)
TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 7, 1
message = Message(fitins_to_recorddict(ins, keep_input=True), 7, "train")
context = Context(run_id=1, node_id=7, node_config={}, state=RecordDict(),
                  run_config=run_config)
reply = app(message, context)
if not reply.has_content():
    print(json.dumps({"error": str(reply.error.reason)}))
    sys.exit(0)
update = parameters_to_ndarrays(recorddict_to_fitres(reply.content, False).parameters)
import torch
print(json.dumps({
    "sha256": hashlib.sha256(b"".join(u.tobytes() for u in update)).hexdigest(),
    "aten": torch.backends.cpu.get_cpu_capability(),
    "env": {k: os.environ.get(k) for k in KNOBS},
}))
""".replace("KNOBS", repr(sorted(PINNED_KERNELS)))


def _fit(tmp_path: Path, reproducible: bool, env: dict[str, str]) -> subprocess.Popen:
    """One fit message in a fresh interpreter started with ``env`` added."""
    config = RunConfig(
        dataset="mnist", data_dir=str(tmp_path / "data"), reproducible=reproducible
    )
    config_file = tmp_path / f"config-{reproducible}.json"
    config_file.write_text(json.dumps(config.to_flower()))
    base = {k: v for k, v in os.environ.items() if k not in PINNED_KERNELS}
    return subprocess.Popen(
        [sys.executable, "-c", _ONE_FIT, str(tmp_path / "w.npz"), str(config_file)],
        env={**base, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _result(process: subprocess.Popen) -> dict[str, Any]:
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def test_the_switch_pins_every_fresh_client_whatever_its_environment(
    mnist_dir: Path, tmp_path: Path
) -> None:
    (tmp_path / "data").symlink_to(mnist_dir)
    np.savez(tmp_path / "w.npz", *get_weights(build_model("2nn", seed=0)))
    cases = {
        "pinned": (True, {}),
        "pinned, as AVX2": (True, AS_AVX2),
    }
    started = {name: _fit(tmp_path, *case) for name, case in cases.items()}
    results = {name: _result(process) for name, process in started.items()}

    pinned = results["pinned, as AVX2"]
    assert pinned["env"] == PINNED_KERNELS  # the switch overrode the environment
    assert pinned["aten"] == "DEFAULT"  # ... before torch read it
    # The same update from either "CPU" ...
    assert results["pinned"]["sha256"] == pinned["sha256"]


def test_a_process_that_loaded_torch_unpinned_is_refused() -> None:
    environ: dict[str, str] = {"MKL_CBWR": "AVX2"}
    with pytest.raises(ConfigError) as error:
        pin_kernels(environ, modules={"torch": object()})
    assert error.value.key == "reproducible"
    for name, value in PINNED_KERNELS.items():
        assert f"{name}={value}" in str(error.value)  # says what to start it with
    assert environ == {"MKL_CBWR": "AVX2"}  # and changes nothing


def test_pinning_before_torch_sets_the_variables_and_is_idempotent() -> None:
    environ: dict[str, str] = {"MKL_CBWR": "AVX2", "OTHER": "1"}
    pin_kernels(environ, modules={})
    assert environ == {**PINNED_KERNELS, "OTHER": "1"}
    assert unpinned(environ) == {}
    # Once pinned, a process that has torch loaded goes on.
    pin_kernels(environ, modules={"torch": object()})


def test_loading_the_server_app_leaves_torch_unloaded() -> None:
    """Flower loads the ServerApp before its ``main`` reads the run config: torch
    must not be loaded by then, or ``reproducible`` could not pin the process."""
    code = "import sys, fl_app.server_app; print('torch' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"
