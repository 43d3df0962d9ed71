"""The shape of the code: imports run one way, no cycle, a client imports little.

The layers are written once, as import-linter contracts in ``pyproject.toml``
(``[tool.importlinter]``): tooling (``fl_app.studies``, ``fl_app.launch``) above the
ServerApp, which builds a strategy, above ``strategies``, above the client and the
app's own modules, above the leaves (``fl_app.keys``, ``fl_app.files``). These tests
run ``lint-imports`` on the tree, show that an upward import breaks it, look for
import cycles anywhere, and handle one real fit message in a fresh interpreter to
see what a client actually imports, lazy imports included.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import numpy as np
import pytest

from fl_app.config import RunConfig
from fl_app.model import build_model, get_weights

APP_DIR = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` on the packages under ``root``, with its pyproject.toml."""
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(root / "pyproject.toml"), "--no-cache"],
        cwd=root,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_import_contracts_hold() -> None:
    result = lint_imports(APP_DIR)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "upward", "contract"),
    [
        # the client reaching for the strategies: what the cycle used to be
        ("fl_app/config.py", "import strategies", "Layers"),
        ("fl_app/client.py", "import fl_app.results", "A client message imports"),
        ("fl_app/files.py", "import fl_app.config", "Layers"),
        ("strategies/fedprox.py", "import fl_app.launch.simulation", "Layers"),
        ("strategies/krum.py", "import strategies.median", "Algorithms stand alone"),
    ],
)
def test_an_upward_import_breaks_the_contracts(
    tmp_path: Path, module: str, upward: str, contract: str
) -> None:
    """The contracts can fail: the same tree with one import added is refused."""
    for package in ("fl_app", "strategies"):
        shutil.copytree(
            APP_DIR / package,
            tmp_path / package,
            ignore=shutil.ignore_patterns("__pycache__"),
        )
    shutil.copy(APP_DIR / "pyproject.toml", tmp_path / "pyproject.toml")
    path = tmp_path / module
    path.write_text(path.read_text() + f"\n{upward}  # noqa\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    broken = [line for line in result.stdout.splitlines() if line.endswith("BROKEN")]
    assert any(line.startswith(contract) for line in broken), result.stdout


def test_the_dependencies_are_what_the_code_imports() -> None:
    """deptry: nothing imported that pyproject.toml does not declare (or gets only
    through another package), nothing declared that nothing imports."""
    result = subprocess.run(
        [str(Path(sys.executable).parent / "deptry"), "."],
        cwd=APP_DIR,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for imported in graph.find_modules_directly_imported_by(module):
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in on_stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return found


def test_no_import_cycle_anywhere() -> None:
    graph = grimp.build_graph("fl_app", "strategies", cache_dir=None)
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = grimp.ImportGraph()
    for name in ("a", "a.x", "a.y", "a.z"):
        graph.add_module(name)
    graph.add_import(importer="a.x", imported="a.y")
    graph.add_import(importer="a.y", imported="a.z")
    graph.add_import(importer="a.z", imported="a.x")
    assert _cycles(graph) == [["a.x", "a.y", "a.z"]]


_HANDLE_ONE_FIT_MESSAGE = """
import json, sys
import numpy as np
from flwr.app import Context, Message, RecordDict
from flwr.common import FitIns, ndarrays_to_parameters
from flwr.compat.common.recorddict_compat import fitins_to_recorddict
from flwr.supercore.task_identity import TaskIdentity

weights_file, run_config_file = sys.argv[1:]
with np.load(weights_file) as stored:
    weights = [stored[name] for name in stored.files]
run_config = json.loads(open(run_config_file).read())
before = set(sys.modules)

from fl_app.client_app import app

loaded = sorted(set(sys.modules) - before)
ins = FitIns(
    ndarrays_to_parameters(weights),
    {"server-round": 1, "learning-rate": 0.05, "local-epochs": 1, "batch-size": 10,
     "seed": 42, "partition-id": 3, "num-partitions": 10, "proximal_mu": 0.1},
)
TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
message = Message(fitins_to_recorddict(ins, keep_input=True), 7, "train")
TaskIdentity.node_id = 7  # as flwr-clientapp runs it
context = Context(run_id=1, node_id=7, node_config={}, state=RecordDict(),
                  run_config=run_config)
reply = app(message, context)
assert reply.has_content(), reply.error
new = sorted(set(sys.modules) - before)
print(json.dumps({"load": loaded, "fit": new}))
"""


def _fit_in_a_fresh_interpreter(tmp_path: Path) -> dict[str, list[str]]:
    """The modules that loading the ClientApp (``load``) and handling one fit
    message (``fit``) imported, beyond NumPy and Flower's message types."""
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            _HANDLE_ONE_FIT_MESSAGE,
            str(tmp_path / "weights.npz"),
            str(tmp_path / "run_config.json"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_a_fit_message_imports_what_the_client_needs(
    mnist_dir: Path, tmp_path: Path
) -> None:
    """A fresh interpreter handles one FedProx fit message through the ClientApp,
    as a deployed ``flwr-clientapp`` process does for every message.

    It imports torch (the client trains: model, SGD, the proximal term), NumPy and
    Flower; never a strategy, the server's outputs, the DP accountant, the tooling or
    Ray. The client part is chosen by the fit config's key from the client's own
    registry, without importing the strategy that sends it. The first message of a
    node also computes the partitions with flwr-datasets (whose package imports
    pandas and matplotlib); later ones read them from the node's cache: that steady
    message is the one checked in full.
    """
    weights = get_weights(build_model("2nn", seed=0))
    np.savez(tmp_path / "weights.npz", *weights)
    config = RunConfig(dataset="mnist", data_dir=str(mnist_dir), strategy="fedprox")
    (tmp_path / "run_config.json").write_text(json.dumps(config.to_flower()))
    first = _fit_in_a_fresh_interpreter(tmp_path)
    second = _fit_in_a_fresh_interpreter(tmp_path)
    steady = second["fit"]

    # Flower loads the ClientApp to check the app before any message: no torch yet.
    assert "torch" not in {name.partition(".")[0] for name in second["load"]}

    for imported in (first["fit"], steady):
        packages = {name.partition(".")[0] for name in imported}
        ours = {name for name in imported if name.startswith("fl_app")}
        assert "torch" in packages  # training needs it
        assert "fl_app.client_parts" in ours  # FedProx's term, chosen by the config
        for server_side in ("strategies", "dp_accounting", "ray", "psutil", "tomli_w"):
            assert server_side not in packages, f"a client imported {server_side}"
        assert not any(
            name.startswith(("fl_app.launch", "fl_app.studies", "fl_app.results"))
            or name in ("fl_app.server_app", "fl_app.checkpoint", "fl_app.grid")
            for name in ours
        ), sorted(ours)
    steady_packages = {name.partition(".")[0] for name in steady}
    for heavy in ("matplotlib", "pandas", "datasets", "flwr_datasets", "PIL"):
        assert heavy not in steady_packages, f"a steady fit message imported {heavy}"
