"""TensorBoard (``tracking.tensorboard``, on by default): event files directly in
the run folder, so ``tensorboard --logdir outputs`` shows each run folder as a run
and a study's runs side by side. The run config goes in as hparams (the
``to_flower()`` keys; booleans as ``"True"``/``"False"``), its metrics being the
tags ``test/accuracy`` and ``test/loss``, whose last values are the final ones.
Every round is flushed, so a crash keeps what was written. A resumed run opens its
writer with ``purge_step = last round + 1``: rounds the crashed process wrote after
its last checkpoint are dropped when TensorBoard reads the folder, so a redone round
appears once.
"""

from __future__ import annotations

import time
import weakref
from pathlib import Path
from typing import Any

from fl_app.config import RunConfig
from fl_app.tracking.base import HPARAMS_METRICS, Tracker, hparams_of


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
