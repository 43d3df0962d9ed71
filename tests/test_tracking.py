"""Trackers (``fl_app.tracking``): what TensorBoard and MLflow get from a run equals
its history.csv, round by round, once each, after a resume too; the run config goes
in as hparams and params; a missing MLflow is refused at start, naming the key. And
the progress line's ETA, which leaves the start-up round out.

The runs are tiny in-process runs (``tests/inprocess.py``): 10 nodes, 5 a round.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

from fl_app.checkpoint import CHECKPOINT_FILE
from fl_app.config import ConfigError, RunConfig
from fl_app.results import HISTORY_CSV, Recorder, RoundRecord, eta_seconds
from fl_app.tracking import MLFLOW_RUN_FILE
from strategies.validation import REASONS
from tests.inprocess import quick_config, run_config_for, run_in_process

# MLflow's SQLAlchemy store, on SQLAlchemy 2.
pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy")

NUM_NODES = 10
# tag -> history.csv column; written wherever the column is finite ...
FROM_ROUND_0 = {
    "test/accuracy": "test_accuracy",
    "test/loss": "test_loss",
    "federated/accuracy": "federated_accuracy",
    "federated/loss": "federated_loss",
    "privacy/epsilon": "epsilon",
}
# ... and these for the training rounds only (round 0 trains no one).
FROM_ROUND_1 = {
    "train/loss": "train_loss",
    "comm/bytes_down": "bytes_sent",  # the weights sent to the sampled clients
    "comm/bytes_up": "bytes_received",  # their replies
    "clients/sampled": "clients_sampled",
    "clients/succeeded": "clients_succeeded",
    "clients/failed": "clients_failed",
    "clients/rejected": "clients_rejected",
    "clients/attackers_sampled": "attackers_sampled",
    "time/round_seconds": "round_seconds",
    **{f"rejected/{reason}": f"rejected_{reason}" for reason in REASONS},
}


def read_csv(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / HISTORY_CSV, newline="") as handle:
        return list(csv.DictReader(handle))


def expected_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """What the trackers must hold, worked out from history.csv."""
    expected: dict[str, list[tuple[int, float]]] = {}
    for row in read_csv(run_dir):
        step = int(row["round"])
        columns = {**FROM_ROUND_0, **(FROM_ROUND_1 if step >= 1 else {})}
        for tag, column in columns.items():
            value = float(row[column])
            if math.isfinite(value):
                expected.setdefault(tag, []).append((step, value))
    return expected


def event_scalars(run_dir: Path) -> tuple[EventAccumulator, dict[str, list]]:
    """The run folder's event files as TensorBoard reads them."""
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    scalars = {
        tag: [(e.step, e.value) for e in events.Scalars(tag)]
        for tag in events.Tags()["scalars"]
    }
    return events, scalars


def assert_same_series(
    got: dict[str, list[tuple[int, float]]],
    expected: dict[str, list[tuple[int, float]]],
) -> None:
    assert set(got) == set(expected)
    for tag, series in expected.items():
        assert [s for s, _ in got[tag]] == [s for s, _ in series], tag
        for (_, value), (_, want) in zip(got[tag], series, strict=True):
            assert value == pytest.approx(want, rel=1e-6, abs=1e-6), tag


@pytest.fixture(scope="module")
def finished(
    mnist_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, dict[str, Any]]:
    """A 3-round FedAvg run with the clients' evaluation, TensorBoard and MLflow on
    (a SQLite store): its run folder and its run config."""
    tmp = tmp_path_factory.mktemp("tracked")
    overrides = {
        **quick_config(mnist_dir, tmp / "out", 3),
        "tracking.tensorboard": True,  # the default, which quick runs turn off
        "fraction-evaluate": 0.3,
        "tracking.mlflow-uri": f"sqlite:///{tmp}/mlflow.db",
        "tracking.mlflow-experiment": "tracking-test",
    }
    run_in_process(overrides, NUM_NODES)
    return (tmp / "out" / "latest").resolve(), run_config_for(overrides)


def test_tensorboard_holds_the_history_and_the_config(
    finished: tuple[Path, dict[str, Any]],
) -> None:
    run_dir, run_config = finished
    expected = expected_scalars(run_dir)
    assert "federated/accuracy" in expected and "train/loss" in expected
    assert "privacy/epsilon" not in expected  # no DP in this run
    # One event file, in the run folder itself: the clients' evaluation of the last
    # round came after its row, and the writer was closed after that.
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 1
    events, scalars = event_scalars(run_dir)
    assert_same_series(scalars, expected)

    hparams = events.PluginTagToContent("hparams")
    data = HParamsPluginData.FromString(hparams["_hparams_/session_start_info"])
    config = RunConfig.from_flower(run_config).to_flower()
    assert set(data.session_start_info.hparams) == set(config)
    assert data.session_start_info.hparams["num-server-rounds"].number_value == 3
    assert data.session_start_info.hparams["dataset"].string_value == "mnist"
    experiment = HParamsPluginData.FromString(hparams["_hparams_/experiment"])
    metrics = {m.name.tag for m in experiment.experiment.metric_infos}
    assert metrics == {"test/accuracy", "test/loss"}
    end = HParamsPluginData.FromString(hparams["_hparams_/session_end_info"])
    assert end.session_end_info.status == 1  # STATUS_SUCCESS


def test_mlflow_holds_the_history_and_the_config(
    finished: tuple[Path, dict[str, Any]],
) -> None:
    from mlflow.tracking import MlflowClient

    run_dir, run_config = finished
    stored = json.loads((run_dir / MLFLOW_RUN_FILE).read_text())
    client = MlflowClient(tracking_uri=run_config["tracking.mlflow-uri"])
    experiment = client.get_experiment_by_name("tracking-test")
    assert experiment is not None
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_id == stored["run_id"]
    assert run.info.run_name == run_dir.name
    assert run.info.status == "FINISHED"
    config = RunConfig.from_flower(run_config).to_flower()
    assert run.data.params == {key: str(value) for key, value in config.items()}
    metrics = {
        key: [
            (m.step, m.value)
            for m in sorted(
                client.get_metric_history(run.info.run_id, key), key=lambda m: m.step
            )
        ]
        for key in run.data.metrics
    }
    assert_same_series(metrics, expected_scalars(run_dir))


def test_a_resumed_run_has_each_round_once(mnist_dir: Path, tmp_path: Path) -> None:
    """Stopped after round 2, resumed to round 3; then the round-2 checkpoint put
    back, as if the process had died after writing round 3's values but before its
    checkpoint, and resumed again: round 3 is redone, and shows once."""
    mlflow_uri = f"sqlite:///{tmp_path}/mlflow.db"
    first = {
        **quick_config(mnist_dir, tmp_path / "out", 2),
        "tracking.tensorboard": True,  # the default, which quick runs turn off
        "tracking.mlflow-uri": mlflow_uri,
    }
    run_in_process(first, NUM_NODES)
    run_dir = (tmp_path / "out" / "latest").resolve()
    mlflow_run = json.loads((run_dir / MLFLOW_RUN_FILE).read_text())["run_id"]
    after_round_2 = tmp_path / "checkpoint-round-2.npz"
    shutil.copy(run_dir / CHECKPOINT_FILE, after_round_2)

    resumed = {
        **first,
        "num-server-rounds": 3,
        "resume": True,
        "resume-dir": str(run_dir),
    }
    run_in_process(resumed, NUM_NODES, run_id=2)
    shutil.copy(after_round_2, run_dir / CHECKPOINT_FILE)
    run_in_process(resumed, NUM_NODES, run_id=3)

    assert [int(row["round"]) for row in read_csv(run_dir)] == [0, 1, 2, 3]
    _, scalars = event_scalars(run_dir)
    assert_same_series(scalars, expected_scalars(run_dir))
    # Round 3 is in the event files twice; the second writer's purge hides the first.
    written = [
        event.step
        for path in sorted(run_dir.glob("events.out.tfevents.*"))
        for event in EventFileLoader(str(path)).Load()
        if any(value.tag == "test/accuracy" for value in event.summary.value)
    ]
    assert sorted(written) == [0, 1, 2, 3, 3]

    # MLflow: the same run all along, finished, every round before the crash once.
    from mlflow.tracking import MlflowClient

    assert json.loads((run_dir / MLFLOW_RUN_FILE).read_text())["run_id"] == mlflow_run
    client = MlflowClient(tracking_uri=mlflow_uri)
    assert client.get_run(mlflow_run).info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(mlflow_run, "test/accuracy")]
    assert sorted(steps)[:3] == [0, 1, 2] and set(steps) == {0, 1, 2, 3}
    resumed_tag = client.get_run(mlflow_run).data.tags["resumed.num-server-rounds"]
    assert resumed_tag == "3"


def test_mlflow_missing_is_refused_at_start_naming_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("mlflow", "mlflow.tracking", "mlflow.entities"):
        monkeypatch.setitem(sys.modules, name, None)
    config = RunConfig().replace(tracking=_tracking("sqlite:///x.db"))
    with pytest.raises(ConfigError, match=r"pip install 'fl-app\[mlflow\]'") as error:
        Recorder(config, tmp_path, "FedAvg")
    assert error.value.key == "tracking.mlflow-uri"


def test_an_mlflow_store_that_cannot_open_is_refused_at_start(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("not a folder")
    uri = f"sqlite:///{tmp_path}/a-file/mlflow.db"
    config = RunConfig().replace(tracking=_tracking(uri))
    with pytest.raises(ConfigError, match="cannot open the MLflow tracking store"):
        Recorder(config, tmp_path, "FedAvg")


def test_no_tracking_without_a_run_folder() -> None:
    config = RunConfig().replace(tracking=_tracking("sqlite:///never.db"))
    assert Recorder(config, None, "FedAvg").tracking.trackers == []


def test_the_results_module_imports_neither_tensorboard_nor_mlflow() -> None:
    code = (
        "import sys, fl_app.results; "
        "print(sorted({m.partition('.')[0] for m in sys.modules} "
        "& {'tensorboard', 'mlflow'}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert result.stdout.strip() == "[]"


def _tracking(uri: str) -> Any:
    from fl_app.config import TrackingConfig

    return TrackingConfig(mlflow_uri=uri)


# ------------------------------------------------------------------ the ETA
def rounds(*elapsed: float, first: int = 0) -> list[RoundRecord]:
    return [
        RoundRecord(first + i, 1.0, 0.5, elapsed_seconds=seconds)
        for i, seconds in enumerate(elapsed)
    ]


def test_the_eta_leaves_the_start_up_round_out() -> None:
    # Round 1 took 30 s (actors, data), the next ones 1 s each.
    assert math.isnan(eta_seconds(rounds(1.0), 10))  # round 0 only
    assert math.isnan(eta_seconds(rounds(1.0, 31.0), 10))  # round 1: no estimate
    assert eta_seconds(rounds(1.0, 31.0, 32.0), 10) == pytest.approx(8.0)
    assert eta_seconds(rounds(1.0, 31.0, 32.0, 34.0), 10) == pytest.approx(10.5)
    assert eta_seconds(rounds(1.0, 31.0, 32.0), 2) == 0.0  # done
    assert math.isnan(eta_seconds([], 10))


def test_the_eta_of_a_resumed_run_leaves_its_start_up_out() -> None:
    # Rounds 0-4 ran before (1 s each after round 1), then the resumed process's
    # first round (5) paid its own start-up: 20 s.
    history = rounds(1.0, 31.0, 32.0, 33.0, 34.0, 54.0)
    assert math.isnan(eta_seconds(history, 10, resumed_after=4))
    history += rounds(56.0, first=6)
    assert eta_seconds(history, 10, resumed_after=4) == pytest.approx(8.0)


def test_the_progress_line_prints_no_eta_until_there_is_one() -> None:
    from fl_app.results import _clock

    assert _clock(eta_seconds(rounds(1.0, 300.0), 10)) == "--"
    assert _clock(eta_seconds(rounds(1.0, 300.0, 302.0), 10)) == "16s"
