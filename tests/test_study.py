"""The study driver (fl_app/studies/driver.py), the report helpers, and the
comparison and attack studies, without Flower: a fake runner stands in for
``flwr run`` and writes the run folder a ServerApp would."""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path
from typing import Any

import pytest

from fl_app.config import RunConfig
from fl_app.studies import attacks, compare
from fl_app.studies.report import (
    markdown_table,
    mean_per_round,
    percent,
    plot_curves,
    rounds_to_target,
)
from fl_app.studies.runs import MARKER, RunStore, StudyError

ROOT = Path(__file__).resolve().parent.parent
PNG = b"\x89PNG\r\n\x1a\n"


def rows_of(accuracies: list[float], **extra: Any) -> list[dict[str, Any]]:
    return [
        {"round": r, "test_accuracy": a, "test_loss": 1.0 - a, **extra}
        for r, a in enumerate(accuracies)
    ]


# --------------------------------------------------------------------- pure helpers
def test_rounds_to_target_is_the_first_round_at_or_above() -> None:
    rows = rows_of([0.1, 0.5, 0.79, 0.8, 0.7, 0.9])
    assert rounds_to_target(rows, 0.8) == 3
    assert rounds_to_target(rows, 0.5) == 1
    assert rounds_to_target(rows, 0.05) == 0  # the initial model counts too
    assert rounds_to_target(rows, 0.95) is None
    assert rounds_to_target([], 0.5) is None
    # A round without an accuracy (None in history.json) is skipped, not a crash.
    assert rounds_to_target([{"round": 1, "test_accuracy": None}], 0.1) is None


def test_markdown_table() -> None:
    table = markdown_table(
        ["strategy", "IID: rounds to 80%"], [["fedavg", 8], ["a|b", None]]
    )
    assert table == (
        "| strategy | IID: rounds to 80% |\n|---|---|\n| fedavg | 8 |\n| a\\|b | - |\n"
    )
    with pytest.raises(ValueError, match="2 columns"):
        markdown_table(["a", "b"], [["only one"]])


def test_small_helpers() -> None:
    rows = rows_of([0.1, 0.5, 0.6], attackers_sampled=2)
    rows[2]["attackers_sampled"] = 4
    assert mean_per_round(rows, "attackers_sampled") == 3.0  # round 0 left out
    assert mean_per_round(rows, "missing") is None
    assert percent(0.8412) == "84.1%"
    assert percent(None) == "-"


def test_plot_curves_writes_a_png(tmp_path: Path) -> None:
    path = tmp_path / "plots" / "curves.png"
    labels = [f"strategy-{i}" for i in range(12)]  # more than tab10 has colours
    plot_curves(
        path,
        {
            "IID": {s: rows_of([0.1, 0.6, 0.8]) for s in labels},
            "shards": {s: rows_of([0.1, 0.3, 0.5]) for s in labels[:5]},
        },
        title="test",
        targets={"IID": 0.8, "shards": 0.7},
    )
    assert path.read_bytes()[:8] == PNG
    assert [p.name for p in path.parent.iterdir()] == ["curves.png"]  # no temp file


# --------------------------------------------------------------------- RunStore
class FakeRunner:
    """Writes what the ServerApp writes: ``<output-dir>/<stamp>-run<id>/`` with
    history.json and config.json. Accuracy comes from ``accuracy(run_config)``."""

    def __init__(self, accuracy: Any = None, fail: set[str] | None = None) -> None:
        self.calls: list[dict[str, Any]] = []
        self.accuracy = accuracy or (lambda config: 0.8)
        self.fail = fail or set()

    def __call__(
        self, run_config: dict[str, Any], num_supernodes: int, log_dir: Path
    ) -> Path:
        self.calls.append(run_config)
        log_dir.mkdir(parents=True, exist_ok=True)
        (log_dir / "run.log").write_text("fake log\n")
        if run_config.get("strategy") in self.fail:
            raise StudyError("run 1 ended finished:failed")
        output_dir = Path(run_config["output-dir"])
        assert output_dir.is_absolute()
        run_dir = output_dir / f"20260101-000000-run{len(self.calls)}"
        run_dir.mkdir(parents=True)
        (output_dir / "latest").symlink_to(run_dir.name)
        rounds = int(run_config.get("num-server-rounds", 3))
        final = self.accuracy(run_config)
        attackers = 2 if run_config.get("attack.kind", "none") != "none" else 0
        rows = [
            {
                "round": r,
                "test_accuracy": 0.1 + (final - 0.1) * r / rounds,
                "test_loss": 1.0,
                "attackers_sampled": attackers if r else 0,
                "clients_rejected": 0,
            }
            for r in range(rounds + 1)
        ]
        (run_dir / "history.json").write_text(json.dumps(rows))
        config = RunConfig.from_flower(run_config)
        (run_dir / "config.json").write_text(json.dumps(dataclasses.asdict(config)))
        return run_dir


def test_study_runs_once_then_skips_the_finished_run(tmp_path: Path) -> None:
    runner = FakeRunner()
    config = {"num-server-rounds": 3, "strategy": "fedavg"}
    out = io.StringIO()
    with RunStore(tmp_path, total=2, runner=runner, stream=out) as study:
        rows = study.run("fedavg-iid", config, 10, label="fedavg iid")
        study.run("median-iid", {**config, "strategy": "median"}, 10)
    assert len(runner.calls) == 2
    assert [r["round"] for r in rows] == [0, 1, 2, 3]
    kept = tmp_path / "runs" / "fedavg-iid"
    assert json.loads((kept / "history.json").read_text()) == rows
    assert (kept / "logs" / "run.log").exists()
    assert json.loads((kept / MARKER).read_text())["num_supernodes"] == 10
    assert not (tmp_path / "runs" / ".incomplete" / "fedavg-iid").exists()
    assert out.getvalue().splitlines()[0].startswith("[1/2] fedavg iid: 80.0% after 3")

    # Run again (as a resumed study would): nothing runs, the same rows come back.
    again = FakeRunner()
    out = io.StringIO()
    with RunStore(tmp_path, total=2, runner=again, stream=out) as study:
        assert study.run("fedavg-iid", config, 10) == rows
        assert study.results["fedavg-iid"].skipped
        assert study.results["fedavg-iid"].config["strategy"] == "fedavg"
    assert again.calls == []
    assert "skipped" in out.getvalue()


def test_a_failed_run_keeps_nothing_and_runs_again_next_time(tmp_path: Path) -> None:
    config = {"num-server-rounds": 2, "strategy": "krum"}
    with RunStore(tmp_path, runner=FakeRunner(fail={"krum"})) as study:
        with pytest.raises(StudyError, match="finished:failed"):
            study.run("krum-iid", config, 10)
    assert not (tmp_path / "runs" / "krum-iid").exists()

    runner = FakeRunner()
    with RunStore(tmp_path, runner=runner, stream=io.StringIO()) as study:
        study.run("krum-iid", config, 10)
    assert len(runner.calls) == 1
    assert (tmp_path / "runs" / "krum-iid" / MARKER).exists()


def test_another_configuration_under_the_same_name_is_refused(tmp_path: Path) -> None:
    config = {"num-server-rounds": 2, "strategy": "fedavg"}
    with RunStore(tmp_path, runner=FakeRunner(), stream=io.StringIO()) as study:
        study.run("fedavg-iid", config, 10)
    runner = FakeRunner()
    with RunStore(tmp_path, runner=runner) as study:
        with pytest.raises(StudyError, match="num-server-rounds: 2 there, 5 now"):
            study.run("fedavg-iid", {**config, "num-server-rounds": 5}, 10)
        with pytest.raises(StudyError, match="num_supernodes"):
            study.run("fedavg-iid", config, 20)
    assert runner.calls == []


def test_the_store_needs_its_context_and_plain_names(tmp_path: Path) -> None:
    study = RunStore(tmp_path, runner=FakeRunner())
    with pytest.raises(RuntimeError, match="context manager"):
        study.run("fedavg-iid", {}, 10)
    with study, pytest.raises(ValueError, match="plain folder name"):
        study.run("../escape", {}, 10)


def test_two_studies_cannot_share_a_folder(tmp_path: Path) -> None:
    with RunStore(tmp_path, runner=FakeRunner()):
        with pytest.raises(StudyError, match="another study"):
            with RunStore(tmp_path, runner=FakeRunner()):
                pass


# --------------------------------------------------------------------- the studies
def test_compare_strategies_writes_its_report_and_resumes(
    tmp_path: Path, mnist_dir: Path
) -> None:
    finals = {("fedavg", "iid"): 0.85, ("fedavg", "shards"): 0.72}
    runner = FakeRunner(lambda c: finals.get((c["strategy"], c["partitioner"]), 0.6))
    argv = [
        "--rounds", "4", "--strategies", "fedavg,median", "--num-supernodes", "20",
        "--out", str(tmp_path / "out"), "--dataset", "mnist",
        "--data-dir", str(mnist_dir),
    ]  # fmt: skip
    assert compare.main(argv, runner=runner) == 0
    assert len(runner.calls) == 4
    assert {c["min-available-clients"] for c in runner.calls} == {20}
    report = (tmp_path / "out" / "compare.md").read_text()
    assert "IID: rounds to 80%" in report and "shards: rounds to 70%" in report
    assert "| fedavg | **85.0%** | 4 | **72.0%** | 4 |" in report
    assert "| median | 60.0% | > 4 | 60.0% | > 4 |" in report
    assert "python scripts/compare_strategies.py --rounds 4" in report
    assert (tmp_path / "out" / "compare.png").read_bytes()[:8] == PNG
    numbers = json.loads((tmp_path / "out" / "compare.json").read_text())
    assert len(numbers["runs"]) == 4
    assert numbers["targets"] == {"iid": 0.8, "shards": 0.7}

    again = FakeRunner()
    assert compare.main(argv, runner=again) == 0
    assert again.calls == []
    assert "4 of them reused" in (tmp_path / "out" / "compare.md").read_text()


def small_comparison(tmp_path: Path, mnist_dir: Path) -> list[str]:
    return [
        "--rounds", "2", "--strategies", "fedavg,median", "--num-supernodes", "10",
        "--out", str(tmp_path / "out"), "--dataset", "mnist",
        "--data-dir", str(mnist_dir),
    ]  # fmt: skip


def test_a_failed_run_ends_the_study_with_1_naming_it(
    tmp_path: Path, mnist_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runner = FakeRunner(fail={"median"})
    assert compare.main(small_comparison(tmp_path, mnist_dir), runner=runner) == 1
    captured = capsys.readouterr()
    assert "compare_strategies: run median-iid: run 1 ended finished:failed" in (
        captured.err
    )
    assert "compare.md (1 of 4 runs)" in captured.out
    report = (tmp_path / "out" / "compare.md").read_text()  # what finished
    assert "| fedavg | **80.0%** | 2 | - | - |" in report
    assert "**incomplete**: 3 runs missing" in report


def test_ctrl_c_ends_the_study_with_130_and_its_report(
    tmp_path: Path, mnist_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    class CtrlC(FakeRunner):
        def __call__(
            self, run_config: dict[str, Any], num_supernodes: int, log_dir: Path
        ) -> Path:
            if self.calls:
                raise KeyboardInterrupt
            return super().__call__(run_config, num_supernodes, log_dir)

    argv = small_comparison(tmp_path, mnist_dir)
    assert compare.main(argv, runner=CtrlC()) == 130
    captured = capsys.readouterr()
    assert "interrupted: finished runs are kept" in captured.err
    assert "[1/4] fedavg iid: 80.0% after 2 rounds" in captured.out
    assert "compare.md (1 of 4 runs)" in captured.out
    report = (tmp_path / "out" / "compare.md").read_text()
    assert "1 of 4 runs finished" in report
    assert (tmp_path / "out" / "compare.png").read_bytes()[:8] == PNG
    # The next invocation reuses the finished run and runs the other three.
    runner = FakeRunner()
    assert compare.main(argv, runner=runner) == 0
    assert [(c["strategy"], c["partitioner"]) for c in runner.calls] == [
        ("median", "iid"), ("fedavg", "shards"), ("median", "shards"),
    ]  # fmt: skip


def test_attack_study_reports_drops_and_verdicts(
    tmp_path: Path, mnist_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def accuracy(config: dict[str, Any]) -> float:
        attacked = config["attack.kind"] != "none"
        if config["strategy"] == "fedavg":
            return 0.10 if attacked else 0.84
        return 0.81 if attacked else 0.82

    runner = FakeRunner(accuracy)
    argv = [
        "--rounds", "3", "--strategies", "fedavg,median", "--num-supernodes", "20",
        "--out", str(tmp_path / "out"), "--dataset", "mnist",
        "--data-dir", str(mnist_dir), "--factor", "5",
    ]  # fmt: skip
    assert attacks.main(argv, runner=runner) == 0
    kinds = [(c["strategy"], c["attack.kind"]) for c in runner.calls]
    assert kinds == [
        ("fedavg", "none"), ("median", "none"),
        ("fedavg", "sign-flip"), ("median", "sign-flip"),
        ("fedavg", "scale"), ("median", "scale"),
    ]  # fmt: skip
    attacked = runner.calls[2]
    assert attacked["attack.fraction"] == 0.2 and attacked["attack.factor"] == 5
    report = (tmp_path / "out" / "attacks.md").read_text()
    assert "| fedavg | 84.0% | 10.0% | +74.0 | ✗ | 10.0% | +74.0 | ✗ | 2.0 |" in report
    assert "| median | 82.0% | 81.0% | +1.0 | ✓ | 81.0% | +1.0 | ✓ | 2.0 |" in report
    assert "factor 5:" in report
    printed = capsys.readouterr().out
    assert "FedAvg degraded" in printed
    assert "Within 2 points of clean under every attack: median" in printed
    assert (tmp_path / "out" / "attacks.png").read_bytes()[:8] == PNG
    numbers = json.loads((tmp_path / "out" / "attacks.json").read_text())
    assert numbers["strategies"]["fedavg"]["sign-flip"]["drop_points"] == 74.0


def test_an_interrupted_run_continues_from_its_checkpoint(tmp_path: Path) -> None:
    """A try that completed a round (its folder holds a checkpoint) is resumed in
    that folder, not started again; a try without one is started afresh."""

    class Interrupted(FakeRunner):
        def __call__(
            self, run_config: dict[str, Any], num_supernodes: int, log_dir: Path
        ) -> Path:
            run_dir = super().__call__(run_config, num_supernodes, log_dir)
            (run_dir / "checkpoint.npz").write_bytes(b"round 2")
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        with RunStore(tmp_path, runner=Interrupted(), stream=io.StringIO()) as study:
            study.run("fedavg", {"strategy": "fedavg"}, 10)

    class Resumed(FakeRunner):
        def __call__(
            self, run_config: dict[str, Any], num_supernodes: int, log_dir: Path
        ) -> Path:
            self.calls.append(run_config)
            return Path(run_config["resume-dir"])

    runner = Resumed()
    with RunStore(tmp_path, runner=runner, stream=io.StringIO()) as study:
        study.run("fedavg", {"strategy": "fedavg"}, 10)
    (config,) = runner.calls
    assert config["resume"] is True
    assert Path(config["resume-dir"]).name == "20260101-000000-run1"
    assert (tmp_path / "runs" / "fedavg" / "checkpoint.npz").read_bytes() == b"round 2"


def test_a_finished_run_leaves_no_client_state_behind(tmp_path: Path) -> None:
    from fl_app.data import cache_dir

    state = cache_dir() / "client-state" / "20260101-000000-run1" / "partition-0"
    state.mkdir(parents=True)
    (state / "round-1.bin").write_bytes(b"c_i")
    other = cache_dir() / "client-state" / "another-run"
    other.mkdir(parents=True)
    with RunStore(tmp_path, runner=FakeRunner(), stream=io.StringIO()) as study:
        study.run("fedavg", {"strategy": "fedavg"}, 10)
    assert not state.parent.exists()
    assert other.exists()


def test_the_privacy_audit_plans_each_defence_and_the_membership_runs() -> None:
    """Every defence run keeps round 1's updates; the membership runs are on
    distinct halves with canaries; every run config is one the app accepts."""
    from fl_app.studies import privacy_audit

    args = privacy_audit.parse_args(
        ["--central", "0.5,1", "--local", "0.1", "--shadows", "3"]
    )
    study = privacy_audit.PrivacyAudit(args, [])
    plan = {run.name: run for run in study.plan()}
    defences = ["none", "sign", "topk", "secagg", "central-z0.5", "central-z1"]
    assert [*plan][:8] == ["default-none", *defences, "local-z0.1"]
    assert plan["default-none"].num_supernodes == 100
    assert all(plan[d].run_config["audit.capture-round"] == 1 for d in defences)
    assert plan["local-z0.1"].run_config["dp.mode"] == "local"
    halves = [n for n in plan if n.startswith("mia-central-z1-")]
    assert [plan[n].run_config["audit.half-seed"] for n in halves] == [0, 1, 2]
    assert all(plan[n].run_config["attack.kind"] == "canary" for n in halves)
    assert len(plan) == 1 + 7 + 3 * 3
    for run in plan.values():
        RunConfig.from_flower({**run.run_config, "data-dir": ""})
