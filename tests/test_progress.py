"""The progress displays (fl_app/launch/progress.py) fed canned ``flwr run`` lines,
and a study's progress lines with a fake runner: no Flower, no clock."""

from __future__ import annotations

import argparse
import io
import math
from collections.abc import Mapping
from pathlib import Path

import pytest

from fl_app.launch.progress import (
    RoundTimer,
    RunProgress,
    StudyProgress,
    duration,
    parse_round_line,
    strip_ansi,
    study_eta,
)
from fl_app.studies.driver import PlannedRun, Study, run_study
from fl_app.studies.report import RunResult
from fl_app.studies.runs import RunStore
from tests.test_study import FakeRunner

PREFIX = "\x1b[92mINFO \x1b[0m:      "  # Flower's log prefix, coloured


def round_line(r: int, total: int = 10, accuracy: float = 80.0) -> str:
    clients = f" | clients 10/10 | ε 1.{r:02d}" if r else ""
    return (
        f"{PREFIX}round {r}/{total} | test acc {accuracy:.2f}% | test loss 0.4321"
        f"{clients} | elapsed {10 * r}s | ETA --\n"
    )


# --------------------------------------------------------------------- parsing, ETA
def test_round_lines_are_found_behind_prefixes_and_colours() -> None:
    found = parse_round_line(round_line(3, accuracy=82.5))
    assert found is not None
    assert (found.round, found.total, found.accuracy) == (3, 10, 82.5)
    initial = parse_round_line("INFO :      round 0/30 | test acc 8.79% | x\n")
    assert initial is not None and initial.round == 0
    nan = parse_round_line("round 2/5 | test acc nan% | test loss nan")
    assert nan is not None and math.isnan(nan.accuracy)
    # Flower's summary ("round 1: 0.50"), other lines: not round lines.
    assert parse_round_line(f"{PREFIX}\t\tround 1: 0.504865283203125\n") is None
    assert parse_round_line(f"{PREFIX}[ROUND 3]\n") is None
    assert strip_ansi(PREFIX) == "INFO :      "


def test_the_eta_leaves_start_up_out() -> None:
    timer = RoundTimer()
    timer.observe(0, 0.0)  # the initial model
    assert timer.eta(10) is None  # no round yet
    timer.observe(1, 60.0)  # round 1: a minute, most of it start-up
    assert timer.per_round() is None and timer.eta(10) is None  # shown "--"
    timer.observe(2, 65.0)
    timer.observe(3, 70.0)
    assert timer.per_round() == 5.0  # (70 - 60) / (3 - 1), not 70 / 3
    assert timer.eta(10) == 35.0


def test_the_eta_of_a_resumed_run_starts_at_its_first_round() -> None:
    timer = RoundTimer()
    timer.observe(6, 100.0)  # resumed after round 5: start-up again
    assert timer.eta(10) is None
    timer.observe(7, 103.0)
    timer.observe(8, 106.0)
    assert timer.per_round() == 3.0
    assert timer.eta(10) == 6.0
    timer.observe(8, 200.0)  # a repeated line changes nothing
    assert timer.eta(10) == 6.0


def test_study_eta_and_durations() -> None:
    assert study_eta([], 3) is None  # nothing run yet in this invocation
    assert study_eta([40.0], 3) == 120.0  # the only estimate there is
    # The first run also started the SuperLink: left out once a second is done.
    assert study_eta([60.0, 40.0, 50.0], 3) == 135.0
    assert study_eta([40.0], 0) == 0.0
    assert [duration(s) for s in (None, math.nan, 4.4, 65, 370, 3725)] == [
        "--", "--", "4s", "1m05s", "6m10s", "1h02m",
    ]  # fmt: skip


# --------------------------------------------------------------------- RunProgress
def fake_stream() -> list[str]:
    return [
        "Using SuperLink: sim (127.0.0.1:39381)\n",
        "Successfully started run 17236265497248499736\n",
        f"{PREFIX}Starting Flower ServerApp, config: num_rounds=10\n",
        round_line(0, accuracy=8.79),
        f"{PREFIX}[ROUND 1]\n",
        round_line(1, accuracy=62.0),
        round_line(2, accuracy=75.5),
        round_line(3, accuracy=82.5),
        f"{PREFIX}configure_fit: strategy sampled 10 clients (out of 100)\n",
    ]


def test_plain_mode_writes_every_line_unchanged() -> None:
    out = io.StringIO()
    lines = fake_stream()
    with RunProgress(stream=out) as progress:  # a StringIO is no terminal
        assert not progress.live
        for line in lines:
            progress(line)  # as flwr_run calls its echo
    assert out.getvalue() == "".join(lines)
    assert progress.last is not None and progress.last.round == 3
    assert progress.total == 10  # from the first round line


def test_live_mode_shows_the_rounds_and_every_other_line() -> None:
    out = io.StringIO()
    with RunProgress(stream=out, live=True, label="fedavg") as progress:
        for line in fake_stream():
            progress.line(line)
    shown = strip_ansi(out.getvalue())
    assert "fedavg round 3/10" in shown
    assert "test acc 82.50%" in shown
    assert "ETA" in shown
    assert "Successfully started run 17236265497248499736" in shown
    assert "configure_fit: strategy sampled 10 clients" in shown
    assert "[ROUND 1]" in shown
    assert "━" in shown  # the bar itself


# --------------------------------------------------------------------- studies
class ThreeRuns(Study):
    script = "scripts/fake_study.py"
    report_name = "fake.md"

    def plan(self) -> list[PlannedRun]:
        return [
            PlannedRun(name, name, {"num-server-rounds": 3, "strategy": s}, 10)
            for name, s in [
                ("fedavg-iid", "fedavg"),
                ("median-iid", "median"),
                ("krum-iid", "krum"),
            ]
        ]

    def write_report(
        self, results: Mapping[str, RunResult], wall_seconds: float
    ) -> None:
        (self.out / self.report_name).write_text(f"{len(results)} runs\n")


def study_args(out: Path, verbose: bool = False) -> argparse.Namespace:
    return argparse.Namespace(out=str(out), num_supernodes=10, verbose=verbose)


def test_a_study_prints_a_line_as_a_run_starts_and_ends(tmp_path: Path) -> None:
    args = study_args(tmp_path / "out")
    # An earlier invocation finished the second run.
    with RunStore(tmp_path / "out", runner=FakeRunner(), stream=io.StringIO()) as s:
        s.run("median-iid", ThreeRuns(args).plan()[1].run_config, 10)
    runner = FakeRunner(lambda config: 0.825)
    out = io.StringIO()
    assert run_study(ThreeRuns(args), args, runner=runner, stream=out) == 0
    assert [c["strategy"] for c in runner.calls] == ["fedavg", "krum"]
    lines = out.getvalue().splitlines()
    assert lines[0] == "[1/3] fedavg-iid: running | ETA --"
    assert lines[1].startswith("[1/3] fedavg-iid: 82.5% after 3 rounds in 0 s | ETA ")
    assert lines[2] == "[2/3] median-iid: done earlier"
    assert lines[3].startswith("[3/3] krum-iid: running | ETA ")
    assert lines[3] != "[3/3] krum-iid: running | ETA --"  # from the first run
    assert lines[4] == "[3/3] krum-iid: 82.5% after 3 rounds in 0 s | ETA 0s"
    assert lines[5].endswith("fake.md (3 of 3)")


def test_study_plain_lines_and_eta_without_a_clock() -> None:
    out = io.StringIO()
    with StudyProgress(3, stream=out) as progress:
        progress.skipped("a")
        assert progress.start("b") is False  # not verbose: no Flower lines
        progress.finished("b", "80.0% after 10 rounds", 45.0)
        echo = progress.start("c")
        progress.finished("c", "81.0% after 10 rounds", 55.0)
    assert out.getvalue().splitlines() == [
        "[1/3] a: done earlier",
        "[2/3] b: running | ETA --",  # the skipped run is no estimate
        "[2/3] b: 80.0% after 10 rounds in 45 s | ETA 45s",
        "[3/3] c: running | ETA 45s",
        "[3/3] c: 81.0% after 10 rounds in 55 s | ETA 0s",
    ]
    assert echo is False


def test_a_verbose_study_echoes_flowers_lines_unchanged() -> None:
    out = io.StringIO()
    with StudyProgress(1, stream=out, verbose=True) as progress:
        echo = progress.start("a")
        assert callable(echo)
        for line in fake_stream():
            echo(line)
        progress.finished("a", "82.5% after 3 rounds", 3.0)
    text = out.getvalue()
    assert "".join(fake_stream()) in text
    assert text.startswith("[1/1] a: running")


@pytest.mark.parametrize("verbose", [False, True])
def test_a_live_study_nests_the_runs_rounds(verbose: bool) -> None:
    out = io.StringIO()
    with StudyProgress(3, stream=out, live=True, verbose=verbose) as progress:
        progress.skipped("fedavg iid")
        echo = progress.start("median iid")
        assert callable(echo)
        for line in fake_stream():
            echo(line)
        progress.finished("median iid", "82.5% after 10 rounds", 40.0)
        progress.start("krum iid")
    shown = strip_ansi(out.getvalue())
    assert "[1/3] fedavg iid: done earlier" in shown
    assert "run 2/3 median iid" in shown and "round 3/10" in shown
    assert "test acc 82.50%" in shown
    assert "[2/3] median iid: 82.5% after 10 rounds in 40 s | ETA 40s" in shown
    assert "run 3/3 krum iid" in shown
    assert ("configure_fit: strategy sampled" in shown) == verbose
