"""Progress displays fed ``flwr run --stream``'s lines: a run's rounds, a study's runs.

``RunProgress`` is an ``echo`` for ``flwr_run`` (``SimulationSuperLink.run``,
``Federation.run``): on a terminal a ``rich`` bar over the rounds (test accuracy,
elapsed, ETA) with every streamed line printed above it; elsewhere (CI, logs,
pipes) each line written through unchanged, as ``echo=True`` does.
``StudyProgress`` is a study's: a bar over its runs with the current run's rounds
nested under it on a terminal, one line as a run starts and one as it ends
elsewhere.

The ServerApp logs a line per round (``fl_app.results.Recorder.log_progress``):
``round 3/10 | test acc 82.50% | ...``, behind Flower's log prefix and colour
codes. The ETAs leave start-up out: round 1 also pays for starting Ray's actors
and loading data, so a round's time is measured from the first round line on
(``RoundTimer``), and a study's from the runs that ran in this invocation
(``study_eta``).
"""

from __future__ import annotations

import math
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TextIO

from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, Task, TextColumn
from rich.text import Text

from fl_app.launch.flower_cli import Echo

__all__ = [
    "RoundLine",
    "RoundTimer",
    "RunProgress",
    "StudyProgress",
    "duration",
    "parse_round_line",
    "strip_ansi",
    "study_eta",
]

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
_ROUND = re.compile(
    r"\bround (\d+)/(\d+) \| test acc ([0-9.]+|nan|inf|-inf)%", re.IGNORECASE
)


def strip_ansi(text: str) -> str:
    """``text`` without terminal colour codes."""
    return _ANSI.sub("", text)


@dataclass(frozen=True)
class RoundLine:
    """What a ServerApp's round line says: round ``round`` of ``total`` (0 is the
    initial model), its test accuracy in percent."""

    round: int
    total: int
    accuracy: float


def parse_round_line(text: str) -> RoundLine | None:
    """The round line in one streamed line (any log prefix, colour codes), or None."""
    found = _ROUND.search(strip_ansi(text))
    if found is None:
        return None
    return RoundLine(int(found[1]), int(found[2]), float(found[3]))


class RoundTimer:
    """Time per round, and so the ETA, without start-up: measured from the first
    round line of round >= 1 that arrives (round 1, or the first a resumed run
    reports). Fed ``(round, timestamp)``; no clock of its own."""

    def __init__(self) -> None:
        self.first: tuple[int, float] | None = None
        self.last: tuple[int, float] | None = None

    def observe(self, round: int, at: float) -> None:
        """Round ``round`` was reported at time ``at`` (seconds, any origin)."""
        if round < 1:  # the initial model: no round's work in it
            return
        if self.last is not None and round < self.last[0]:  # another run: start over
            self.first = self.last = None
        if self.first is None:
            self.first = (round, at)
        if self.last is None or round > self.last[0]:
            self.last = (round, at)

    def per_round(self) -> float | None:
        """Seconds per round since the first round line; None before a second."""
        if self.first is None or self.last is None or self.last[0] <= self.first[0]:
            return None
        return (self.last[1] - self.first[1]) / (self.last[0] - self.first[0])

    def eta(self, total: int) -> float | None:
        """Seconds until round ``total``, as of the last round line; None (shown
        ``--``) before a second round line."""
        per_round = self.per_round()
        if per_round is None or self.last is None:
            return None
        return per_round * max(total - self.last[0], 0)


def study_eta(durations: Sequence[float], left: int) -> float | None:
    """A study's ETA: the mean duration of the runs that ran in this invocation
    (finished earlier ones are left out) times the runs left; None without one.
    The first run also starts the SuperLink: once a second is done, it is left out."""
    if left <= 0:
        return 0.0
    if not durations:
        return None
    steady = durations[1:] if len(durations) >= 2 else durations
    return sum(steady) / len(steady) * left


def duration(seconds: float | None) -> str:
    """``42s``, ``6m10s``, ``1h02m``; ``--`` for no estimate (None, nan)."""
    if seconds is None or not math.isfinite(seconds):
        return "--"
    whole = max(round(seconds), 0)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


# --------------------------------------------------------------------- rich
class _Elapsed(ProgressColumn):
    def render(self, task: Task) -> Text:
        return Text(duration(task.elapsed), style="progress.elapsed")


class _Eta(ProgressColumn):
    """``ETA 1m05s`` counting down to the task's ``deadline`` (monotonic), ``--``
    without one."""

    def render(self, task: Task) -> Text:
        deadline = task.fields.get("deadline")
        left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
        return Text(f"ETA {duration(left)}", style="progress.remaining")


def _bars(stream: TextIO) -> Progress:
    """The rich display both classes use, on ``stream`` as a terminal."""
    console = Console(file=stream, force_terminal=True)
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(bar_width=30),
        TextColumn("{task.fields[info]}"),
        _Elapsed(),
        _Eta(),
        console=console,
        redirect_stdout=False,
        redirect_stderr=False,
    )


def _is_terminal(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def _print_above(progress: Progress, text: str) -> None:
    """One streamed line (colour codes kept) above the bars."""
    line = Text.from_ansi(text.rstrip("\r\n"))
    progress.console.print(line, highlight=False, soft_wrap=True)


# --------------------------------------------------------------------- one run
class RunProgress:
    """One run's rounds, fed ``flwr run``'s streamed lines (``line``, or the
    object itself as ``echo=``); use as a context manager.

    Live (``live``, by default when ``stream`` is a terminal): a bar over the
    rounds (``label``, ``round k/N``, last test accuracy, elapsed, ETA) with every
    streamed line, round lines too, printed above it. Otherwise each line is
    written through unchanged. ``total_rounds``, when not given, comes from the
    first round line. ``progress`` and ``show_lines`` are ``StudyProgress``'s: a
    bar on its display, with or without the lines.
    """

    def __init__(
        self,
        total_rounds: int | None = None,
        *,
        stream: TextIO | None = None,
        live: bool | None = None,
        label: str = "",
        progress: Progress | None = None,
        show_lines: bool = True,
    ) -> None:
        self.stream = stream if stream is not None else sys.stdout
        self.live = _is_terminal(self.stream) if live is None else live
        self.total = total_rounds
        self.label = label
        self.show_lines = show_lines
        self.last: RoundLine | None = None
        self.timer = RoundTimer()
        self._progress = progress
        self._own = progress is None
        self._task: Any = None

    def __enter__(self) -> RunProgress:
        if self.live:
            if self._progress is None:
                self._progress = _bars(self.stream)
            if self._own:
                self._progress.start()
            self._task = self._progress.add_task(
                self._description(), total=self.total, info="", deadline=None
            )
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop the bar: left on screen when it is this display's own, taken off
        a study's."""
        progress, task, self._task = self._progress, self._task, None
        if progress is None or task is None:
            return
        if self._own:
            progress.refresh()
            progress.stop()
        else:
            progress.remove_task(task)

    def line(self, text: str) -> None:
        """One streamed line (its newline included)."""
        if self.show_lines:
            if self._progress is not None and self._task is not None:
                _print_above(self._progress, text)
            else:  # plain (or live but not entered): as echo=True writes it
                self.stream.write(text)
                self.stream.flush()
        if (found := parse_round_line(text)) is not None:
            self._round(found, time.monotonic())

    __call__ = line

    def _round(self, found: RoundLine, now: float) -> None:
        self.last, self.total = found, found.total
        self.timer.observe(found.round, now)
        eta = self.timer.eta(found.total)
        if self._progress is not None and self._task is not None:
            self._progress.update(
                self._task,
                description=self._description(),
                total=found.total,
                completed=found.round,
                info=f"test acc {found.accuracy:.2f}%",
                deadline=None if eta is None else now + eta,
                refresh=True,  # a line a round: shown at once
            )

    def _description(self) -> str:
        done = self.last.round if self.last is not None else 0
        total = self.total if self.total is not None else "?"
        return " ".join(filter(None, [self.label, f"round {done}/{total}"]))


# --------------------------------------------------------------------- a study
class StudyProgress:
    """A study's runs (``total`` planned); use as a context manager.

    A run finished by an earlier invocation (``skipped``) counts at once, not for
    the ETA, the mean duration of the runs run now (the first left out once a second
    is done: it also started the SuperLink) times the runs left.
    Live: a bar over the runs (``run i/M <label>``) and the current run's rounds
    under it (``start`` returns its ``echo``; with ``verbose`` Flower's lines are
    printed above too), each finished run's line above the bars. Plain: a line as
    a run starts and one as it ends (``[3/12] label: 82.5% after 10 rounds in
    45 s | ETA 6m10s``); with ``verbose`` Flower's lines in between, unchanged.
    """

    def __init__(
        self,
        total: int,
        *,
        stream: TextIO | None = None,
        live: bool | None = None,
        verbose: bool = False,
    ) -> None:
        self.stream = stream if stream is not None else sys.stdout
        self.live = _is_terminal(self.stream) if live is None else live
        self.total = total
        self.verbose = verbose
        self.count = 0  # runs started or skipped so far
        self.durations: list[float] = []  # of the runs run in this invocation
        self._progress: Progress | None = None
        self._task: Any = None
        self._run: RunProgress | None = None

    def __enter__(self) -> StudyProgress:
        if self.live:
            self._progress = _bars(self.stream)
            self._progress.start()
            self._task = self._progress.add_task(
                f"run 0/{self.total}", total=self.total, info="", deadline=None
            )
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        progress, self._progress = self._progress, None
        if progress is not None:
            progress.refresh()
            progress.stop()

    def message(self, text: str) -> None:
        """A line of the study's own: above the bars, or printed."""
        if self._progress is not None:
            self._progress.console.print(
                text, markup=False, highlight=False, soft_wrap=True
            )
        else:
            print(text, file=self.stream, flush=True)

    def eta(self, left: int) -> float | None:
        return study_eta(self.durations, left)

    def skipped(self, label: str) -> None:
        """The next run was finished by an earlier invocation."""
        self.count += 1
        self.message(f"[{self.count}/{self.total}] {label}: done earlier")
        self._advance(self.count, f"run {self.count}/{self.total} {label}")

    def start(self, label: str) -> Echo:
        """The next run starts: the ``echo`` its streamed lines go to."""
        self.count += 1
        left = self.total - self.count + 1  # this one included
        if self._progress is None:
            self.message(
                f"[{self.count}/{self.total}] {label}: running | "
                f"ETA {duration(self.eta(left))}"
            )
            return self._write if self.verbose else False
        self._advance(self.count - 1, f"run {self.count}/{self.total} {label}", left)
        self._run = RunProgress(
            stream=self.stream,
            live=True,
            label="  ",
            progress=self._progress,
            show_lines=self.verbose,
        ).__enter__()
        return self._run

    def finished(self, label: str, summary: str, seconds: float) -> None:
        """The run started last ended after ``seconds``: ``summary`` says how."""
        if self._run is not None:
            self._run.close()
            self._run = None
        self.durations.append(seconds)
        left = self.total - self.count
        self.message(
            f"[{self.count}/{self.total}] {label}: {summary} in {seconds:.0f} s | "
            f"ETA {duration(self.eta(left))}"
        )
        self._advance(self.count, None, left)

    def _advance(
        self, done: int, description: str | None, left: int | None = None
    ) -> None:
        """The runs' bar: ``done`` runs, the current one's name, the ETA of the
        ``left`` runs (by default those not started) from now."""
        if self._progress is None:
            return
        eta = self.eta(self.total - self.count if left is None else left)
        fields: dict[str, Any] = {
            "completed": done,
            "deadline": None if eta is None else time.monotonic() + eta,
        }
        if description is not None:
            fields["description"] = description
        self._progress.update(self._task, refresh=True, **fields)

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()
