"""The heterogeneity study (fl_app/studies/heterogeneity.py) without Flower runs:
time to accuracy from hand-built histories, the ratios to uniform, the table and
verdict, the deadline against the devices, and every planned run config parsed as
the app parses it."""

from __future__ import annotations

import statistics
import tomllib
from pathlib import Path
from typing import Any

import pytest

from fl_app.config import RunConfig
from fl_app.studies import heterogeneity as study
from strategies import strategy_class

ROOT = Path(__file__).resolve().parent.parent
X = "\N{MULTIPLICATION SIGN}"


def rows_of(
    accuracies: list[float],
    seconds_per_round: float,
    *,
    late: int = 0,
    succeeded: int = 10,
    **extra: Any,
) -> list[dict[str, Any]]:
    """History rows as history.json has them: round 0 the initial model at 0 s,
    every round ``seconds_per_round`` long."""
    return [
        {
            "round": r,
            "test_accuracy": a,
            "virtual_time_s": r * seconds_per_round,
            "clients_sampled": succeeded if r else 0,
            "clients_succeeded": succeeded if r else 0,
            "clients_late": late if r else 0,
            "clients_rejected": 0,
            "model_updated": r > 0,
            **extra,
        }
        for r, a in enumerate(accuracies)
    ]


# ----------------------------------------------------------- time to accuracy
def test_time_to_accuracy_is_the_first_row_reaching_the_target() -> None:
    rows = rows_of([0.1, 0.6, 0.74, 0.75, 0.70, 0.80], 10.0)
    assert study.first_reaching(rows, 0.75)["round"] == 3  # equal counts
    assert study.time_to_accuracy(rows, 0.75) == 30.0
    assert study.time_to_accuracy(rows, 0.8) == 50.0  # the first, not the dip
    assert study.time_to_accuracy(rows, 0.1) == 0.0  # the initial model


def test_time_to_accuracy_never_reached_or_no_clock() -> None:
    rows = rows_of([0.1, 0.6, 0.74], 10.0)
    assert study.first_reaching(rows, 0.75) is None
    assert study.time_to_accuracy(rows, 0.75) is None
    assert study.time_to_accuracy([], 0.75) is None
    unclocked = [{**row, "virtual_time_s": None} for row in rows]  # NaN as null
    assert study.time_to_accuracy(unclocked, 0.6) is None


def test_the_running_mean_time_waits_for_a_steady_window() -> None:
    rows = rows_of([0.1, 0.76, 0.70, 0.76, 0.77, 0.78, 0.79, 0.80], 10.0)
    assert study.time_to_accuracy(rows, 0.75) == 10.0  # one lucky round
    # windows of 3 ending at rounds 2.. : 0.52, 0.74, 0.7433.., 0.77
    assert study.time_to_running_mean(rows, 0.75, window=3) == 50.0
    assert study.time_to_running_mean(rows, 0.75, window=1) == 10.0
    assert study.time_to_running_mean(rows, 0.8, window=3) is None  # best 0.79
    assert study.time_to_running_mean(rows[:2], 0.1, window=3) is None  # too short
    gap = [*rows[:2], {"round": 2, "test_accuracy": None}, *rows[3:]]
    assert study.time_to_running_mean(gap, 0.5, window=3) == 50.0  # window restarts
    with pytest.raises(ValueError):
        study.time_to_running_mean(rows, 0.75, window=0)


def test_a_run_summarized() -> None:
    rows = rows_of([0.1, 0.5, 0.76, 0.70], 5.5, late=4)
    rows[2]["clients_rejected"] = 1
    n = study.summarize_run(rows, 0.75)
    assert n["time_to_target_s"] == 11.0
    assert n["rounds_to_target"] == 2
    assert n["updates_to_target"] == 6 + 5  # late and rejected left out
    assert n["final_accuracy"] == 0.70 and n["best_accuracy"] == 0.76
    assert n["rounds"] == 3
    assert n["total_virtual_s"] == pytest.approx(16.5)
    assert n["mean_round_s"] == pytest.approx(5.5)
    assert n["late_per_round"] == 4
    assert n["staleness_mean"] is None and n["staleness_max"] is None
    kept_old = rows_of([0.1, 0.5, 0.76], 5.5)
    kept_old[1]["model_updated"] = False  # too few on time: no update
    assert study.summarize_run(kept_old, 0.75)["updates_to_target"] == 10
    never = study.summarize_run(rows, 0.9)
    assert never["time_to_target_s"] is None
    assert never["rounds_to_target"] is None and never["updates_to_target"] is None


def test_fedbuff_rows_give_their_staleness() -> None:
    rows = rows_of([0.1, 0.5, 0.8], 3.0)
    rows[1].update(staleness_mean=1.0, staleness_max=2)
    rows[2].update(staleness_mean=2.0, staleness_max=4)
    n = study.summarize_run(rows, 0.75)
    assert n["staleness_mean"] == 1.5 and n["staleness_max"] == 4
    assert n["time_to_target_s"] == 6.0


# ----------------------------------------------------------- ratios and table
def numbers() -> dict[str, dict[str, Any]]:
    """uniform at 100 s; over-commit faster, oort slower, fedbuff never."""
    target = 0.75
    return {
        "uniform": study.summarize_run(rows_of([0.1, 0.5, 0.75], 50.0), target),
        "over-commit-1.3": study.summarize_run(rows_of([0.1, 0.8], 40.0), target),
        "oort": study.summarize_run(rows_of([0.1, 0.5, 0.6, 0.9], 50.0), target),
        "fedbuff": study.summarize_run(rows_of([0.1, 0.5, 0.7], 3.0), target),
    }


def test_ratios_to_uniform() -> None:
    times = study.ratios(numbers())
    assert times["uniform"] == 1.0
    assert times["over-commit-1.3"] == pytest.approx(0.4)
    assert times["oort"] == pytest.approx(1.5)
    assert times["fedbuff"] is None  # never reached
    assert study.ratio(3.0, None) is None and study.ratio(3.0, 0.0) is None
    assert study.ratio(None, 2.0) is None and study.ratio(3.0, 2.0) == 1.5
    without_uniform = {k: v for k, v in numbers().items() if k != "uniform"}
    assert set(study.ratios(without_uniform).values()) == {None}


def test_table_rows_in_plan_order() -> None:
    rows = study.table_rows(study.VARIANTS, numbers(), 0.75)
    assert [r[0] for r in rows] == [
        "uniform",
        "over-commit 1.3",
        "Oort",
        "FedBuff (K = 10, concurrency 20)",
    ]
    uniform, over, oort, fedbuff = rows
    assert uniform[1:3] == ["1.7 min", f"1.00{X}"]
    assert uniform[3:7] == ["not reached", None, "2 rounds", 20]  # 3 rows < 5
    assert over[1:3] == ["0.7 min", f"0.40{X}"] and over[5] == "1 rounds"
    assert oort[2] == f"1.50{X}"
    assert fedbuff[1] == "not reached (> 2 updates)"
    assert fedbuff[2] is None and fedbuff[5] == "> 2 updates"
    assert fedbuff[-1] == "-"  # no rounds to drop from
    assert all(len(r) == len(study.table_headers(0.75)) for r in rows)
    assert "virtual time to 75%" in study.table_headers(0.75)


def test_verdict_names_who_beat_uniform() -> None:
    lines = study.verdict_lines(study.VARIANTS, numbers(), 0.75)
    assert lines[0].startswith("Beat uniform on virtual time to 75%: over-commit 1.3")
    assert f"(0.40{X})" in lines[0] and "uniform reached 75% at 1.7 min" in lines[0]
    assert lines[1].startswith("Slower than uniform: Oort")
    assert lines[2].startswith("Never reached 75%: FedBuff") and "2 updates" in lines[2]
    assert lines[3] == "uniform's 5-row running mean never reached 75%."
    steady = {
        "uniform": study.summarize_run(rows_of([0.1, *[0.8] * 6], 50.0), 0.75),
        "oort": study.summarize_run(rows_of([0.1, *[0.8] * 6], 40.0), 0.75),
    }
    lines = study.verdict_lines(study.VARIANTS, steady, 0.75)
    assert lines[-1] == (
        "On the 5-row running mean of 75% (uniform: 4.2 min), faster than uniform: "
        f"Oort 3.3 min (0.80{X})."
    )
    slower_only = {k: v for k, v in numbers().items() if k != "over-commit-1.3"}
    lines = study.verdict_lines(study.VARIANTS, slower_only, 0.75)
    assert lines[0].startswith("None beat uniform on virtual time to 75%")
    stuck = {"uniform": study.summarize_run(rows_of([0.1, 0.5], 9.0), 0.75)}
    (line,) = study.verdict_lines(study.VARIANTS, stuck, 0.75)
    assert line.startswith("uniform did not reach 75% in 1 rounds")
    assert study.verdict_lines(study.VARIANTS, {}, 0.75) == []


def test_curve_points_are_virtual_minutes() -> None:
    rows = rows_of([0.1, 0.5], 90.0)
    rows.append({"round": 2, "test_accuracy": 0.6, "virtual_time_s": None})
    assert study.virtual_minutes(rows) == [(0.0, 0.1), (1.5, 0.5)]
    steady = rows_of([0.1, 0.2, 0.3, 0.7], 60.0)
    means = study.running_mean_minutes(steady, window=3)
    assert means == [(2.0, pytest.approx(0.2)), (3.0, pytest.approx(0.4))]
    assert study.running_mean_minutes(steady[:2], window=3) == []
    assert study.zoom_minutes(numbers()) is None  # no 5-row mean reached 75%
    long = {"a": {"time_to_mean_target_s": 120.0}, "b": {"time_to_mean_target_s": 60}}
    assert study.zoom_minutes(long) == 3.0


# ----------------------------------------------------------- the plan
def test_the_deadline_sits_at_the_median_device() -> None:
    times = study.device_seconds(42)
    assert len(times) == study.NUM_PARTITIONS
    median = statistics.median(times)
    assert median <= study.DEADLINE_S < median + 0.5  # rounded up to a half second
    on_time = sum(t <= study.DEADLINE_S for t in times)
    assert 40 <= on_time <= 60  # stragglers in most rounds of 10
    assert study.device_seconds(42) == times  # seeded


def pyproject_keys() -> set[str]:
    """The run-config keys Flower accepts: pyproject's, tables flattened."""
    table = tomllib.loads((ROOT / "pyproject.toml").read_text())
    config = table["tool"]["flwr"]["app"]["config"]
    keys = set()
    for key, value in config.items():
        keys |= {f"{key}.{sub}" for sub in value} if isinstance(value, dict) else {key}
    return keys


def planned(tmp_path: Path, *extra: str) -> list[Any]:
    args = study.parse_args(["--data-dir", str(tmp_path), *extra])
    return study.HeterogeneityStudy(args, []).plan()


def test_every_planned_run_is_a_valid_app_config(tmp_path: Path) -> None:
    plan = planned(tmp_path)
    assert [run.name for run in plan] == [v.key for v in study.VARIANTS]
    assert len(plan) == 7
    known = pyproject_keys()
    parsed = {}
    for run in plan:
        assert set(run.run_config) <= known  # flwr run refuses keys pyproject lacks
        assert run.num_supernodes == 100
        config = RunConfig.from_flower(
            {
                **RunConfig().to_flower(),
                **run.run_config,
                "data-dir": "",  # the test's folder holds no data
                "output-dir": str(tmp_path / "out"),
            }
        )
        strategy_class(config)  # FedBuff refuses synchronous knobs here
        parsed[run.name] = config
        assert (config.dataset, config.partitioner) == ("fashion-mnist", "shards")
        assert (config.model, config.local_epochs, config.batch_size) == ("2nn", 1, 10)
        assert (config.num_partitions, config.fraction_fit) == (100, 0.1)
        assert config.min_fit_clients <= 10 and config.min_available_clients == 100
        assert (config.seed, config.num_server_rounds) == (42, study.DEFAULT_ROUNDS)
        assert config.stop_at_accuracy == 0  # every run goes its full rounds
        assert config.heterogeneity.enabled
    # the device distributions stay at their defaults in every run
    defaults = RunConfig().heterogeneity
    for config in parsed.values():
        assert config.heterogeneity.spec() == defaults.spec()
    assert parsed["uniform"].heterogeneity == defaults.__class__(enabled=True)
    assert parsed["uniform"].selection.policy == "uniform"
    assert parsed["uniform"].strategy == "fedavg"
    assert parsed["over-commit-1.3"].heterogeneity.over_commit == 1.3
    assert parsed["power-of-choice"].selection.policy == "power-of-choice"
    assert parsed["power-of-choice"].selection.candidates == 0  # d = 2m
    assert parsed["oort"].selection.policy == "oort"
    fedbuff = parsed["fedbuff"]
    assert fedbuff.strategy == "fedbuff"
    assert (fedbuff.fedbuff.buffer_size, fedbuff.fedbuff.concurrency) == (10, 20)
    partial_work = parsed["deadline-partial"].heterogeneity
    assert partial_work.round_deadline == study.DEADLINE_S and partial_work.partial_work
    dropped = parsed["deadline-drop"].heterogeneity
    assert dropped.round_deadline == study.DEADLINE_S and not dropped.partial_work


def test_runs_rounds_and_out_are_options(tmp_path: Path) -> None:
    plan = planned(tmp_path, "--runs", "fedbuff,uniform", "--rounds", "3")
    assert [run.name for run in plan] == ["uniform", "fedbuff"]  # plan order
    assert all(run.run_config["num-server-rounds"] == 3 for run in plan)
    args = study.parse_args(["--data-dir", str(tmp_path), "--out", str(tmp_path)])
    assert study.HeterogeneityStudy(args, []).out == tmp_path.resolve()
    assert args.target == 0.75 and args.dataset == "fashion-mnist"


@pytest.mark.parametrize(
    "argv",
    [
        ["--runs", "oort"],  # no baseline
        ["--runs", "uniform,nope"],
        ["--strategies", "fedavg"],
        ["--target", "0"],
        ["--rounds", "0"],
    ],
)
def test_bad_options_are_refused(tmp_path: Path, argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        study.parse_args(["--data-dir", str(tmp_path), *argv])
    assert exit_info.value.code == 2
