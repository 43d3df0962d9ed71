"""What every tracker shares: the scalars of a round by tag, the run config as
hparams, and ``Tracker``, which writes each value once.

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
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fl_app.config import RunConfig

# A history row, ``fl_app.results.RoundRecord`` (not imported: results imports this).
RoundRecord = Any

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
