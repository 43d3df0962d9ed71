"""Where a run's metrics go besides its folder's files: TensorBoard and MLflow.

The ``Recorder`` (``fl_app.results``) hands every tracker the history after each
round it writes, and finishes them when the run is over. Each tracker writes only
what it has not written yet: a round's row is sent when it is recorded, and the
clients' evaluation of that round (added to the row later) when it comes.

**TensorBoard** (``tracking.tensorboard``, on by default): event files directly in
the run folder, so ``tensorboard --logdir outputs`` shows each run folder as a run
and a study's runs side by side. The run config goes in as hparams (the
``to_flower()`` keys; booleans as ``"True"``/``"False"``), its metrics being the
tags ``test/accuracy`` and ``test/loss``, whose last values are the final ones.
Every round is flushed, so a crash keeps what was written. A resumed run opens its
writer with ``purge_step = last round + 1``: rounds the crashed process wrote after
its last checkpoint are dropped when TensorBoard reads the folder, so a redone round
appears once.

**MLflow** (``tracking.mlflow-uri``, opt-in, ``pip install 'fl-app[mlflow]'``): an
``MlflowClient`` of its own (no global MLflow state), experiment
``tracking.mlflow-experiment`` (made if missing), a run named after the run folder
with the run config as params and the same metric names as the TensorBoard tags,
terminated FINISHED when the run is over (FAILED when the process ends first). Its
id is kept in the run folder (``mlflow_run.json``), so a resumed run continues the
same MLflow run. MLflow cannot delete a metric value: a round the crashed process
logged after its last checkpoint keeps that value next to the redone one (a warning
says so when it happens).

Scalars, step = round number (only finite values are written):

=============================  =====================================  ===========
tag                            history column                         rounds
=============================  =====================================  ===========
``test/accuracy``              ``test_accuracy``                      0, 1, ...
``test/loss``                  ``test_loss``                          0, 1, ...
``federated/accuracy``         ``federated_accuracy``                 0, 1, ...
``federated/loss``             ``federated_loss``                     0, 1, ...
``privacy/epsilon``            ``epsilon`` (central DP)               0, 1, ...
``train/loss``                 ``train_loss``                         1, 2, ...
``comm/bytes_down``            ``bytes_sent`` (server to clients)     1, 2, ...
``comm/bytes_up``              ``bytes_received`` (clients' replies)  1, 2, ...
``clients/sampled``            ``clients_sampled``                    1, 2, ...
``clients/succeeded``          ``clients_succeeded``                  1, 2, ...
``clients/failed``             ``clients_failed``                     1, 2, ...
``clients/rejected``           ``clients_rejected``                   1, 2, ...
``clients/attackers_sampled``  ``attackers_sampled``                  1, 2, ...
``rejected/<reason>``          ``rejected_<reason>``, one per reason  1, 2, ...
``time/round_seconds``         ``round_seconds``                      1, 2, ...
``extra/<name>``               a strategy's numeric ``extra`` column  1, 2, ...
=============================  =====================================  ===========

(``rejected/<reason>``, not ``clients/rejected/<reason>``: in MLflow's file store a
metric name cannot also be the folder of others.)

Importing this module imports neither TensorBoard nor MLflow: each tracker imports
its library when it is made.
"""

from __future__ import annotations

import json
import math
import time
import weakref
from logging import WARNING
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flwr.common import log

from fl_app.config import ConfigError, RunConfig
from fl_app.files import write_json

if TYPE_CHECKING:
    from collections.abc import Sequence

# A history row, ``fl_app.results.RoundRecord`` (not imported: results imports this).
RoundRecord = Any

MLFLOW_RUN_FILE = "mlflow_run.json"
#: The hparams' metrics: tags whose last value is the run's final one.
HPARAMS_METRICS = ("test/accuracy", "test/loss")

# Columns with a value from round 0 (the initial model) on.
_EVALUATION = {
    "test/accuracy": "test_accuracy",
    "test/loss": "test_loss",
    "federated/accuracy": "federated_accuracy",
    "federated/loss": "federated_loss",
    "privacy/epsilon": "epsilon",
}
# Columns of a training round: round 1 on.
_ROUND = {
    "train/loss": "train_loss",
    "comm/bytes_down": "bytes_sent",
    "comm/bytes_up": "bytes_received",
    "clients/sampled": "clients_sampled",
    "clients/succeeded": "clients_succeeded",
    "clients/failed": "clients_failed",
    "clients/rejected": "clients_rejected",
    "clients/attackers_sampled": "attackers_sampled",
    "time/round_seconds": "round_seconds",
}


def round_scalars(record: RoundRecord) -> dict[str, float]:
    """The round's scalars by tag (see the module docstring): finite values only."""
    pairs = [(tag, getattr(record, column)) for tag, column in _EVALUATION.items()]
    if record.round >= 1:
        pairs += [(tag, getattr(record, column)) for tag, column in _ROUND.items()]
        pairs += [(f"rejected/{k}", v) for k, v in record.rejected.items()]
        pairs += [(f"extra/{k}", v) for k, v in record.extra.items()]
    return {
        tag: float(value)
        for tag, value in pairs
        if isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
    }


def hparams_of(config: RunConfig) -> dict[str, bool | int | float | str]:
    """The run config, flat (``to_flower()``), as hparams take it."""
    values: dict[str, bool | int | float | str] = {}
    for key, value in config.to_flower().items():
        if isinstance(value, bool):
            values[key] = str(value)  # torch's hparams() would make it 0/1
        elif isinstance(value, int | float | str):
            values[key] = value
        elif value is not None:
            values[key] = str(value)
    return values


class Tracker:
    """Writes each round's scalars once: the rows after the last one sent, and the
    values the last one sent gained since (the clients' evaluation)."""

    def __init__(self, config: RunConfig, run_dir: Path) -> None:
        self.config = config
        self.run_dir = run_dir
        self._started = False  # opened once: the earlier rounds are settled
        self._open = False
        self._resumed_after = -1  # rounds up to this were recorded by a process before
        self._sent_round = -1
        self._sent_tags: set[str] = set()
        # Read by the finalizer of a process that ends before finish(): whether the
        # last round is in (then FINISHED, else FAILED).
        self._complete = [False]
        self._finalizer: weakref.finalize | None = None

    def resume(self, last_round: int) -> None:
        """The run continues a history whose rounds up to ``last_round`` an earlier
        process recorded (and, if its data is there, tracked)."""
        self._resumed_after = last_round

    def update(self, history: Sequence[RoundRecord]) -> None:
        """Write what is new in ``history`` since the last call."""
        if not history:
            return
        if not self._started:
            tracked = self._start()
            self._started = self._open = True
            if tracked and self._resumed_after >= 0:
                self._sent_round = self._resumed_after
                done = [r for r in history if r.round == self._resumed_after]
                self._sent_tags = set(round_scalars(done[-1])) if done else set()
        pending = self._pending(history)
        self._complete[0] = history[-1].round >= self.config.num_server_rounds
        if not pending:
            return
        if not self._open:  # a value after finish(): reopen, same run
            self._reopen()
            self._open = True
        for step, scalars in pending:
            self._write(step, scalars)
        self._flush()

    def _pending(self, history: Sequence[RoundRecord]) -> list[tuple[int, dict]]:
        """The scalars not sent yet, by round; marked as sent."""
        new = []
        for record in reversed(history):
            if record.round < self._sent_round:
                break
            new.append(record)
        pending = []
        for record in reversed(new):
            scalars = round_scalars(record)
            if record.round == self._sent_round:
                scalars = {k: v for k, v in scalars.items() if k not in self._sent_tags}
            else:
                self._sent_round, self._sent_tags = record.round, set()
            self._sent_tags |= set(scalars)
            if scalars:
                pending.append((record.round, scalars))
        return pending

    def finish(self) -> None:
        """The run is over: mark it so and let go of the files and connections."""
        if self._open:
            if self._finalizer is not None:
                self._finalizer.detach()
            self._end(success=True)
            self._open = False

    # -- what a tracker implements -------------------------------------------
    def _start(self) -> bool:
        """Open the output; True if it holds the rounds a resumed run recorded
        before. Set ``self._finalizer`` for a process that ends before finish()."""
        raise NotImplementedError

    def _reopen(self) -> None:
        """Open the output again after finish(), to add to the same run."""
        raise NotImplementedError

    def _write(self, step: int, scalars: dict[str, float]) -> None:
        raise NotImplementedError

    def _flush(self) -> None:
        """Make the round's values durable."""

    def _end(self, success: bool) -> None:
        raise NotImplementedError


class TensorBoardTracker(Tracker):
    """Event files in the run folder (see the module docstring)."""

    def __init__(self, config: RunConfig, run_dir: Path) -> None:
        super().__init__(config, run_dir)
        self._writer: Any = None

    def _start(self) -> bool:
        had_events = any(self.run_dir.glob("events.out.tfevents.*"))
        resumed = had_events and self._resumed_after >= 0
        self._open_writer(self._resumed_after + 1 if resumed else None)
        return resumed

    def _reopen(self) -> None:
        self._open_writer(None)

    def _open_writer(self, purge_step: int | None) -> None:
        """A writer in the run folder, the run config as its hparams."""
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        self._writer = SummaryWriter(log_dir=str(self.run_dir), purge_step=purge_step)
        experiment, session_start, _ = hparams(
            hparams_of(self.config), dict.fromkeys(HPARAMS_METRICS, 0.0)
        )
        self._writer.file_writer.add_summary(experiment)
        self._writer.file_writer.add_summary(session_start)
        self._writer.flush()
        self._finalizer = weakref.finalize(
            self, _end_tensorboard, self._writer, self._complete
        )

    def _write(self, step: int, scalars: dict[str, float]) -> None:
        for tag, value in scalars.items():
            self._writer.add_scalar(tag, value, global_step=step)

    def _flush(self) -> None:
        self._writer.flush()

    def _end(self, success: bool) -> None:
        _end_tensorboard(self._writer, [success])


def _end_tensorboard(writer: Any, success: list[bool]) -> None:
    """The hparams session's end (its status), then the writer closed."""
    from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
    from tensorboard.plugins.hparams.api_pb2 import Status
    from tensorboard.plugins.hparams.metadata import (
        PLUGIN_DATA_VERSION,
        PLUGIN_NAME,
        SESSION_END_INFO_TAG,
    )
    from tensorboard.plugins.hparams.plugin_data_pb2 import (
        HParamsPluginData,
        SessionEndInfo,
    )

    try:
        status = Status.Value("STATUS_SUCCESS" if success[0] else "STATUS_FAILURE")
        content = HParamsPluginData(
            session_end_info=SessionEndInfo(status=status, end_time_secs=time.time()),
            version=PLUGIN_DATA_VERSION,
        )
        metadata = SummaryMetadata(
            plugin_data=SummaryMetadata.PluginData(
                plugin_name=PLUGIN_NAME, content=content.SerializeToString()
            )
        )
        summary = Summary(
            value=[Summary.Value(tag=SESSION_END_INFO_TAG, metadata=metadata)]
        )
        writer.file_writer.add_summary(summary)
    finally:
        writer.close()


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


class Tracking:
    """The trackers a run's config asks for (none without a run folder)."""

    def __init__(self, config: RunConfig, run_dir: Path | None) -> None:
        self.trackers: list[Tracker] = []
        if run_dir is None:
            return
        if config.tracking.mlflow_uri:
            self.trackers.append(MlflowTracker(config, run_dir))
        if config.tracking.tensorboard:
            self.trackers.append(TensorBoardTracker(config, run_dir))

    def resume(self, last_round: int) -> None:
        """Rounds up to ``last_round`` were recorded by the process before."""
        for tracker in self.trackers:
            tracker.resume(last_round)

    def update(self, history: Sequence[RoundRecord]) -> None:
        """Send what is new in the history."""
        for tracker in self.trackers:
            tracker.update(history)

    def finish(self) -> None:
        """The run is over."""
        for tracker in self.trackers:
            tracker.finish()
