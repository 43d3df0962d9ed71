"""MLflow (``tracking.mlflow-uri``, opt-in, ``pip install 'fl-app[mlflow]'``): an
``MlflowClient`` of its own (no global MLflow state), experiment
``tracking.mlflow-experiment`` (made if missing), a run named after the run folder
with the run config as params and the same metric names as the TensorBoard tags,
terminated FINISHED when the run is over (FAILED when the process ends first). Its
id is kept in the run folder (``mlflow_run.json``), so a resumed run continues the
same MLflow run. MLflow cannot delete a metric value: a round the crashed process
logged after its last checkpoint keeps that value next to the redone one (a warning
says so when it happens).
"""

from __future__ import annotations

import json
import time
import weakref
from logging import WARNING
from pathlib import Path
from typing import Any

from flwr.common import log

from fl_app.config import ConfigError, RunConfig
from fl_app.files import write_json
from fl_app.tracking.base import Tracker

MLFLOW_RUN_FILE = "mlflow_run.json"


class MlflowTracker(Tracker):
    """A run in an MLflow tracking store (see the module docstring). Made at the
    run's start: a missing MLflow or a store that cannot be opened stops it there."""

    def __init__(self, config: RunConfig, run_dir: Path) -> None:
        super().__init__(config, run_dir)
        tracking = config.tracking
        try:
            from mlflow.entities import Metric, Param
            from mlflow.tracking import MlflowClient
        except ImportError as error:
            raise ConfigError(
                "tracking.mlflow-uri",
                f"is set ({tracking.mlflow_uri!r}) but MLflow cannot be imported "
                f"({error}): pip install 'fl-app[mlflow]'",
            ) from error
        self._metric, self._param = Metric, Param
        self.uri = tracking.mlflow_uri
        try:
            self.client = MlflowClient(tracking_uri=self.uri)
            experiment = self.client.get_experiment_by_name(tracking.mlflow_experiment)
            if experiment is None:
                self.experiment_id = self.client.create_experiment(
                    tracking.mlflow_experiment
                )
            elif experiment.lifecycle_stage != "active":
                raise ConfigError(
                    "tracking.mlflow-experiment",
                    f"experiment {tracking.mlflow_experiment!r} is deleted in "
                    f"{self.uri}: restore it or name another",
                )
            else:
                self.experiment_id = experiment.experiment_id
        except ConfigError:
            raise
        except Exception as error:  # any store error, told at start
            raise ConfigError(
                "tracking.mlflow-uri",
                f"cannot open the MLflow tracking store {self.uri!r}: "
                f"{type(error).__name__}: {error}",
            ) from error
        self.run_id: str | None = None

    def _start(self) -> bool:
        previous = self._previous_run()
        if previous is not None:
            self.run_id = previous
            self.client.update_run(previous, status="RUNNING")
            self._add_params()
            self._warn_of_redone_rounds()
        else:
            run = self.client.create_run(
                self.experiment_id,
                run_name=self.run_dir.name,
                tags={"fl_app.run_dir": str(self.run_dir)},
            )
            self.run_id = run.info.run_id
            write_json(
                self.run_dir / MLFLOW_RUN_FILE,
                {
                    "tracking_uri": self.uri,
                    "experiment_id": self.experiment_id,
                    "run_id": self.run_id,
                },
            )
            self._add_params()
        self._watch()
        return previous is not None

    def _reopen(self) -> None:
        assert self.run_id is not None
        self.client.update_run(self.run_id, status="RUNNING")
        self._watch()

    def _watch(self) -> None:
        """Terminate the MLflow run if the process ends before finish()."""
        self._finalizer = weakref.finalize(
            self, _end_mlflow, self.client, self.run_id, self._complete
        )

    def _previous_run(self) -> str | None:
        """The MLflow run of this run folder in this store, if it has one."""
        path = self.run_dir / MLFLOW_RUN_FILE
        if not path.is_file():
            return None
        stored = json.loads(path.read_text())
        if stored.get("tracking_uri") != self.uri:
            return None
        try:
            run = self.client.get_run(stored["run_id"])
        except Exception:  # deleted from the store: a new run, all rounds
            return None
        if run.info.lifecycle_stage != "active":
            return None
        return str(stored["run_id"])

    def _add_params(self) -> None:
        """The run config as params. A resumed run may change some keys
        (``fl_app.checkpoint.MAY_CHANGE``) but params are immutable: the new
        values go in as tags ``resumed.<key>``."""
        assert self.run_id is not None
        logged = self.client.get_run(self.run_id).data.params
        params, changed = [], {}
        for key, value in self.config.to_flower().items():
            text = str(value)
            if key not in logged:
                params.append(self._param(key, text))
            elif logged[key] != text:
                changed[f"resumed.{key}"] = text
        for start in range(0, len(params), 100):  # MLflow's limit per batch
            self.client.log_batch(self.run_id, params=params[start : start + 100])
        for key, text in changed.items():
            self.client.set_tag(self.run_id, key, text)

    def _warn_of_redone_rounds(self) -> None:
        assert self.run_id is not None
        steps = [
            m.step for m in self.client.get_metric_history(self.run_id, "test/loss")
        ]
        if steps and max(steps) > self._resumed_after:
            log(
                WARNING,
                "MLflow run %s holds rounds after %s from before the crash; MLflow "
                "cannot delete them, so those rounds show twice there",
                self.run_id,
                self._resumed_after,
            )

    def _write(self, step: int, scalars: dict[str, float]) -> None:
        assert self.run_id is not None
        now = int(time.time() * 1000)
        metrics = [self._metric(k, v, now, step) for k, v in scalars.items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def _end(self, success: bool) -> None:
        assert self.run_id is not None
        _end_mlflow(self.client, self.run_id, [success])


def _end_mlflow(client: Any, run_id: str, success: list[bool]) -> None:
    """Terminate the MLflow run: FINISHED if its last round is in, else FAILED."""
    status = "FINISHED" if success[0] else "FAILED"
    try:
        client.set_terminated(run_id, status=status)
    except Exception as error:  # at exit: say so, do not raise
        log(WARNING, "MLflow run %s not marked %s: %s", run_id, status, error)
