"""Where a run's metrics go besides its folder's files: TensorBoard and MLflow.

The ``Recorder`` (``fl_app.results``) hands every tracker the history after each
round it writes, and finishes them when the run is over. Each tracker writes only
what it has not written yet: a round's row is sent when it is recorded, and the
clients' evaluation of that round (added to the row later) when it comes.

``events`` writes TensorBoard's event files (``tracking.tensorboard``, on by
default), ``mlflow_run`` an MLflow run (``tracking.mlflow-uri``, opt-in); ``base``
has the tags they share (a table) and the once-only bookkeeping. Importing this
package imports neither TensorBoard nor MLflow: each tracker imports its library
when it is made.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from fl_app.config import RunConfig
from fl_app.tracking.base import RoundRecord, Tracker, round_scalars
from fl_app.tracking.events import TensorBoardTracker
from fl_app.tracking.mlflow_run import MLFLOW_RUN_FILE, MlflowTracker

__all__ = ["MLFLOW_RUN_FILE", "Tracking", "round_scalars"]


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
