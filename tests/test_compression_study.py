"""The compression study (fl_app/studies/compression.py and its numbers) without
Flower: its codecs, run names and configs, the table and the goals from made-up
histories, the option checks, and one whole study with a fake runner whose replies
shrink as the scheme compresses."""

from __future__ import annotations

import dataclasses
import json
import tomllib
from pathlib import Path
from typing import Any

import pytest

import fl_app.config
from fl_app.compression import SCHEMES
from fl_app.config import RunConfig
from fl_app.studies import compression as study
from fl_app.studies.compression_numbers import (
    PARTITIONERS,
    Goal,
    Variant,
    cumulative_upload,
    goals,
    meets,
    points_text,
    ratio_text,
    run_name,
    size_text,
    study_table,
    summarize,
    upload_per_round,
    variants,
    verdicts,
)
from tests.test_study import PNG, ROOT

PYPROJECT = ROOT / "pyproject.toml"
X = "\N{MULTIPLICATION SIGN}"


DEFAULT_KEYS = ["none", "fp16", "int8", "topk-0.01", "sign"]


def compression_known() -> bool:
    """Whether RunConfig (and so the app) reads ``compression.*`` yet."""
    return "compression" in fl_app.config.GROUPS


def argv_for(data_dir: Path, *extra: str) -> list[str]:
    return ["--dataset", "mnist", "--data-dir", str(data_dir), *extra]


def history(
    accuracies: list[float], upload: float | list[float], download: float = 8e6
) -> list[dict[str, Any]]:
    """Rows as history.json has them. ``upload``: every row's bytes_received, or
    one number for every round but 0 (the initial model: nothing sent)."""
    if isinstance(upload, list):
        uploads = upload
    else:
        uploads = [0, *[upload] * (len(accuracies) - 1)]
    return [
        {
            "round": r,
            "test_accuracy": a,
            "test_loss": 1.0 - a,
            "bytes_received": uploads[r],
            "bytes_sent": download if r else 0,
        }
        for r, a in enumerate(accuracies)
    ]


def pyproject_keys() -> set[str]:
    """The run-config keys Flower accepts: pyproject's, tables flattened."""
    table = tomllib.loads(PYPROJECT.read_text())["tool"]["flwr"]["app"]["config"]
    keys = set()
    for key, value in table.items():
        if isinstance(value, dict):
            keys |= {f"{key}.{sub}" for sub in value}
        else:
            keys.add(key)
    return keys


# --------------------------------------------------------------------- codecs
def test_the_codecs_and_their_run_names() -> None:
    codecs = variants(SCHEMES, [0.01])
    assert [v.key for v in codecs] == DEFAULT_KEYS
    assert [v.scheme for v in codecs] == ["none", "fp16", "int8", "topk", "sign"]
    assert [v.topk_fraction for v in codecs] == [None, None, None, 0.01, None]
    two = variants(["none", "topk", "sign"], [0.01, 0.1])
    assert [v.key for v in two] == ["none", "topk-0.01", "topk-0.1", "sign"]
    names = [run_name(v, p) for p in PARTITIONERS for v in variants(SCHEMES, [0.01])]
    assert names[0] == "none-iid" and names[-1] == "sign-dirichlet"
    assert "topk-0.01-dirichlet" in names
    assert len(set(names)) == 10
    assert all("/" not in n and not n.startswith(".") for n in names)


def test_run_configs_hold_the_protocol(mnist_dir: Path) -> None:
    args = study.parse_args(argv_for(mnist_dir, "--num-supernodes", "20"))
    base = study.run_config(args, Variant("none"), "iid")
    assert base == {
        "num-server-rounds": 50,
        "fraction-fit": 0.1,
        "min-available-clients": 20,
        "strategy": "fedavg",
        "model": "2nn",
        "local-epochs": 1,
        "batch-size": 10,
        "learning-rate": 0.1,
        "partitioner": "iid",
        "dataset": "mnist",
        "data-dir": str(mnist_dir.resolve()),
        "seed": 42,
        "compression.scheme": "none",
    }
    topk = study.run_config(args, Variant("topk", 0.1), "dirichlet")
    assert topk == {
        **base,
        "partitioner": "dirichlet",
        "dirichlet-alpha": 0.5,
        "compression.scheme": "topk",
        "compression.topk-fraction": 0.1,
    }
    sign = study.run_config(args, Variant("sign"), "iid")
    assert sign["compression.scheme"] == "sign"
    assert "compression.topk-fraction" not in sign  # only topk reads it


def all_configs(mnist_dir: Path) -> list[dict[str, Any]]:
    args = study.parse_args(argv_for(mnist_dir, "--topk-fractions", "0.01,0.1"))
    return [
        study.run_config(args, v, p)
        for p in PARTITIONERS
        for v in variants(args.schemes, args.topk_fractions)
    ]


def test_run_configs_are_valid_apart_from_compression(mnist_dir: Path) -> None:
    """What RunConfig knew before compression was wired in; runs always."""
    known = pyproject_keys()
    for config in all_configs(mnist_dir):
        rest = {k: v for k, v in config.items() if not k.startswith("compression.")}
        assert set(rest) <= known  # flwr run refuses keys pyproject lacks
        parsed = RunConfig.from_flower({**rest, "output-dir": "out"})
        assert (parsed.model, parsed.strategy) == ("2nn", "fedavg")
        assert (parsed.local_epochs, parsed.batch_size) == (1, 10)
        assert parsed.learning_rate == 0.1 and parsed.fraction_fit == 0.1
        assert parsed.num_server_rounds == 50
        if parsed.partitioner == "dirichlet":
            assert parsed.dirichlet_alpha == 0.5


def test_run_configs_are_valid_app_configs(mnist_dir: Path) -> None:
    if not compression_known():
        pytest.skip("RunConfig does not read compression.* yet")
    known = pyproject_keys()
    schemes = []
    for config in all_configs(mnist_dir):
        assert set(config) <= known
        parsed = RunConfig.from_flower({**config, "output-dir": "out"})
        compression = parsed.compression
        assert compression.scheme == config["compression.scheme"]
        if compression.scheme == "topk":
            assert compression.topk_fraction == config["compression.topk-fraction"]
        schemes.append((compression.scheme, compression.topk_fraction))
    assert ("topk", 0.1) in schemes and ("topk", 0.01) in schemes
    assert len(schemes) == 12


# --------------------------------------------------------------------- numbers
def fake_histories() -> dict[str, list[dict[str, Any]]]:
    """IID: int8 at exactly 4x, topk and sign well past 20x within 2 points.
    Dirichlet: int8 just under 4x, topk loses too much, sign 32x within 2."""
    ramp = [0.1, 0.5, 0.7]
    return {
        "none-iid": history([*ramp, 0.85], [0, 7.9e6, 8.0e6, 8.1e6]),
        "fp16-iid": history([*ramp, 0.8503], 4e6),
        "int8-iid": history([*ramp, 0.8478], 2e6),
        "topk-0.01-iid": history([*ramp, 0.8412], 0.16e6),
        "sign-iid": history([*ramp, 0.8301], 0.25e6),
        "none-dirichlet": history([*ramp, 0.80], 8e6),
        "fp16-dirichlet": history([*ramp, 0.80], 4e6),
        "int8-dirichlet": history([*ramp, 0.7990], 2.02e6),
        "topk-0.01-dirichlet": history([*ramp, 0.7750], 0.16e6),
        "sign-dirichlet": history([*ramp, 0.7830], 0.25e6),
    }


CODECS = variants(SCHEMES, [0.01])


def test_upload_is_the_mean_over_the_training_rounds() -> None:
    rows = history([0.1, 0.5, 0.7, 0.8], [999.0, 100.0, 200.0, 600.0])
    assert upload_per_round(rows) == 300.0  # round 0 left out
    assert upload_per_round(rows[:1]) is None
    assert cumulative_upload(rows) == [(100.0, 0.5), (300.0, 0.7), (900.0, 0.8)]


def test_ratios_and_points_against_none() -> None:
    numbers = summarize(CODECS, PARTITIONERS, fake_histories())
    iid, dirichlet = numbers["iid"], numbers["dirichlet"]
    assert iid["none"]["upload_bytes_per_round"] == pytest.approx(8e6)
    assert iid["none"]["upload_ratio"] == pytest.approx(1.0)
    assert iid["none"]["accuracy_change_points"] == 0.0
    assert iid["int8"]["upload_ratio"] == pytest.approx(4.0)
    assert iid["topk-0.01"]["upload_ratio"] == pytest.approx(50.0)
    assert iid["int8"]["accuracy_change_points"] == -0.22
    assert iid["topk-0.01"]["accuracy_change_points"] == -0.88
    assert iid["fp16"]["accuracy_change_points"] == 0.03
    assert iid["sign"]["download_bytes_per_round"] == 8e6
    assert dirichlet["int8"]["upload_ratio"] == pytest.approx(8 / 2.02)
    assert dirichlet["topk-0.01"]["accuracy_change_points"] == -2.5
    # A run not there (yet): None everywhere, and no ratio against a missing none.
    partial = summarize(CODECS, ["iid"], {"int8-iid": history([0.1, 0.8], 2e6)})
    assert partial["iid"]["none"]["final_accuracy"] is None
    assert partial["iid"]["int8"]["upload_ratio"] is None
    assert partial["iid"]["int8"]["accuracy_change_points"] is None
    assert partial["iid"]["int8"]["upload_bytes_per_round"] == 2e6


def test_the_table_from_fake_histories() -> None:
    histories = fake_histories()
    del histories["sign-dirichlet"]  # not run yet
    numbers = summarize(CODECS, PARTITIONERS, histories)
    lines = study_table(CODECS, PARTITIONERS, numbers).splitlines()
    assert lines[0] == (
        "| scheme | IID: upload per round | IID: fewer bytes than none "
        "| IID: final accuracy | IID: accuracy vs none (points) "
        "| Dirichlet: upload per round | Dirichlet: fewer bytes than none "
        "| Dirichlet: final accuracy | Dirichlet: accuracy vs none (points) |"
    )
    assert lines[2] == (
        "| none | 8.00 MB | baseline | 85.00% | baseline "
        "| 8.00 MB | baseline | 80.00% | baseline |"
    )
    assert lines[4] == (
        f"| int8 | 2.00 MB | 4.00{X} | 84.78% | -0.22 "
        f"| 2.02 MB | 3.96{X} | 79.90% | -0.10 |"
    )
    assert lines[5] == (
        f"| topk-0.01 | 160.0 kB | 50.0{X} | 84.12% | -0.88 "
        f"| 160.0 kB | 50.0{X} | 77.50% | -2.50 |"
    )
    assert lines[6] == f"| sign | 250.0 kB | 32.0{X} | 83.01% | -1.99 | - | - | - | - |"
    assert len(lines) == 7


def test_small_formats() -> None:
    assert size_text(7_968_400) == "7.97 MB"
    assert size_text(159_400) == "159.4 kB"
    assert size_text(812) == "812 B"
    assert size_text(None) is None
    assert ratio_text(3.996) == f"4.00{X}"
    assert ratio_text(3.994) == f"3.99{X}"
    assert ratio_text(31.94) == f"31.9{X}"
    assert ratio_text(203.4) == f"203{X}"
    assert points_text(-0.8) == "-0.80"
    assert points_text(0.31) == "+0.31"
    assert points_text(0.0) == "+0.00"


def entry(ratio: float | None, change: float | None) -> dict[str, Any]:
    return {
        "upload_ratio": ratio,
        "accuracy_change_points": change,
        "final_accuracy": None if change is None else 0.8,
    }


def test_a_goal_counts_ratio_and_points_at_their_bounds() -> None:
    goal = Goal(4.0, 1.0)
    assert meets(entry(4.0, -1.0), goal)  # both bounds included
    assert meets(entry(50.0, +0.5), goal)  # a gain is no loss
    assert not meets(entry(3.99, 0.0), goal)
    assert not meets(entry(10.0, -1.01), goal)
    assert not meets(entry(None, 0.0), goal)
    assert not meets(entry(10.0, None), goal)
    # -1.0000000000000009 points of float noise is one point.
    numbers = summarize(
        [Variant("none"), Variant("int8")],
        ["iid"],
        {
            "none-iid": history([0.1, 0.85], 8e6),
            "int8-iid": history([0.1, 0.84], 2e6),
        },
    )
    assert numbers["iid"]["int8"]["accuracy_change_points"] == -1.0
    assert meets(numbers["iid"]["int8"], goal)


def test_goals_met_not_met_and_open() -> None:
    numbers = summarize(CODECS, PARTITIONERS, fake_histories())
    checked = goals(numbers)
    four, twenty = checked["iid"]
    assert (four["ratio"], four["points"]) == (4.0, 1.0)
    assert four["met"] is True
    assert four["schemes"] == ["topk-0.01", "int8"]  # highest ratio first
    assert twenty["met"] is True and twenty["best"] == "topk-0.01"
    assert twenty["schemes"] == ["topk-0.01", "sign"]  # sign: -1.99 <= 2
    four, twenty = checked["dirichlet"]
    # int8 is 3.96x; topk -2.5 and sign -1.7 points.
    assert four["met"] is False and four["schemes"] == [] and four["best"] is None
    assert twenty["met"] is True and twenty["schemes"] == ["sign"]

    histories = fake_histories()
    del histories["sign-dirichlet"]
    still = goals(summarize(CODECS, PARTITIONERS, histories))
    assert [g["met"] for g in still["dirichlet"]] == [None, None]  # sign may yet
    assert [g["met"] for g in still["iid"]] == [True, True]
    histories = fake_histories()
    del histories["none-dirichlet"]  # no baseline: nothing to compare against
    no_base = goals(summarize(CODECS, PARTITIONERS, histories))
    assert [g["met"] for g in no_base["dirichlet"]] == [None, None]
    only_none = goals(
        summarize([Variant("none")], ["iid"], {"none-iid": history([0.1], 1)})
    )
    assert [g["met"] for g in only_none["iid"]] == [None, None]


def test_verdict_lines() -> None:
    numbers = summarize(CODECS, PARTITIONERS, fake_histories())
    lines = verdicts(numbers, goals(numbers))
    assert lines[0] == (
        f"Goals: ≥ 4{X} fewer upload bytes than none with ≤ 1 point of final "
        f"accuracy lost (some scheme), and ≥ 20{X} fewer upload bytes than none "
        "with ≤ 2 points of final accuracy lost (the best scheme): met on IID; "
        "not met on Dirichlet."
    )
    assert lines[1].startswith("IID, ≥ 4")
    assert lines[1].endswith(
        f"lost: met by topk-0.01 (50.0{X}, -0.88 points), int8 (4.00{X}, -0.22 points)"
    )
    assert lines[2].endswith(
        f"lost: met by topk-0.01 (50.0{X}, -0.88 points), sign (32.0{X}, -1.99 points)"
    )
    assert lines[3].endswith(
        f"lost: not met; highest ratio within 1 point: int8 (3.96{X}, -0.10 points); "
        f"highest ratio overall: topk-0.01 (50.0{X}, -2.50 points)"
    )
    assert lines[4].endswith(f"lost: met by sign (32.0{X}, -1.70 points)")
    assert len(lines) == 5

    histories = fake_histories()
    del histories["sign-dirichlet"]
    numbers = summarize(CODECS, PARTITIONERS, histories)
    lines = verdicts(numbers, goals(numbers))
    assert lines[0].endswith("met on IID; open on Dirichlet (runs missing).")
    assert lines[4].endswith(
        "lost: open (runs missing); highest ratio within 2 points: int8 "
        f"(3.96{X}, -0.10 points); highest ratio overall: topk-0.01 "
        f"(50.0{X}, -2.50 points)"
    )


def test_plot_against_cumulative_upload_writes_a_png(tmp_path: Path) -> None:
    histories = fake_histories()
    path = tmp_path / "plots" / "compression.png"
    study.plot_upload_curves(
        path,
        {
            "IID": {k: histories[f"{k}-iid"] for k in DEFAULT_KEYS},
            "Dirichlet": {"none": histories["none-dirichlet"]},
            "empty": {},
        },
        title="test",
    )
    assert path.read_bytes()[:8] == PNG
    assert [p.name for p in path.parent.iterdir()] == ["compression.png"]


# --------------------------------------------------------------------- options
def test_defaults(mnist_dir: Path) -> None:
    args = study.parse_args(argv_for(mnist_dir))
    assert args.rounds == 50
    assert args.schemes == ["none", "fp16", "int8", "topk", "sign"]
    assert args.topk_fractions == [0.01]
    assert args.partitioners == ["iid", "dirichlet"]
    assert args.out == Path("outputs/compression")
    assert args.num_supernodes == 100
    assert args.data_dir == str(mnist_dir.resolve())
    chosen = study.parse_args(
        argv_for(
            mnist_dir,
            "--schemes", "sign, none,topk",
            "--topk-fractions", "0.1,0.01,0.10",
            "--partitioners", "dirichlet",
            "--rounds", "3",
        )
    )  # fmt: skip
    assert chosen.schemes == ["none", "topk", "sign"]  # SCHEMES' order
    assert chosen.topk_fractions == [0.1, 0.01]  # as given, each once
    assert chosen.partitioners == ["dirichlet"]
    assert chosen.rounds == 3


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--schemes", "int8,sign"], "--schemes must include none"),
        (["--schemes", "none,zip"], "--schemes: unknown zip"),
        (["--schemes", ","], "--schemes: unknown (none given)"),
        (["--topk-fractions", "0"], "--topk-fractions: 0 is not in (0, 1]"),
        (["--topk-fractions", "1.5"], "--topk-fractions: 1.5 is not in (0, 1]"),
        (["--topk-fractions", "nan"], "--topk-fractions: nan is not in (0, 1]"),
        (["--topk-fractions", "1%"], "--topk-fractions: '1%' is not a number"),
        (["--topk-fractions", ","], "--topk-fractions: none given"),
        (["--partitioners", "shards"], "--partitioners: unknown shards"),
        (["--strategies", "median"], "--strategies does not apply"),
        (["--rounds", "0"], "--rounds must be >= 1"),
        (["--num-supernodes", "1"], "--num-supernodes must be >= 2"),
    ],
)
def test_bad_options_are_refused(
    extra: list[str],
    message: str,
    mnist_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as stopped:
        study.parse_args(argv_for(mnist_dir, *extra))
    assert stopped.value.code == 2
    assert message in capsys.readouterr().err


def test_help_shows_the_studys_rounds_and_no_strategies(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        study.parse_args(["--help"])
    text = capsys.readouterr().out
    assert "rounds per run (default: 50)" in text
    assert "--strategies" not in text
    assert "--topk-fractions" in text


# --------------------------------------------------------------------- whole study
UPLOAD = {"none": 8e6, "fp16": 4e6, "int8": 2e6, "topk": 0.16e6, "sign": 0.25e6}
FINAL = {"none": 0.85, "fp16": 0.85, "int8": 0.845, "topk": 0.84, "sign": 0.82}


class CompressionRunner:
    """Writes the run folder a ServerApp writes; the upload per round and the final
    accuracy follow the config's scheme (Dirichlet 5 points lower)."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def __call__(
        self, run_config: dict[str, Any], num_supernodes: int, log_dir: Path
    ) -> Path:
        self.calls.append(run_config)
        log_dir.mkdir(parents=True, exist_ok=True)
        (log_dir / "run.log").write_text("fake log\n")
        run_dir = (
            Path(run_config["output-dir"]) / f"20260101-000000-run{len(self.calls)}"
        )
        run_dir.mkdir(parents=True)
        scheme = run_config["compression.scheme"]
        rounds = run_config["num-server-rounds"]
        lower = 0.05 if run_config["partitioner"] == "dirichlet" else 0.0
        final = FINAL[scheme] - lower
        accuracies = [0.1 + (final - 0.1) * r / rounds for r in range(rounds + 1)]
        rows = history(accuracies, UPLOAD[scheme])
        (run_dir / "history.json").write_text(json.dumps(rows))
        (run_dir / "config.json").write_text(json.dumps(config_json(run_config)))
        return run_dir


def config_json(run_config: dict[str, Any]) -> dict[str, Any]:
    """The ServerApp's config.json; until RunConfig reads compression.*, without
    them and with the table added by hand."""
    if compression_known():
        return dataclasses.asdict(RunConfig.from_flower(run_config))
    rest = {k: v for k, v in run_config.items() if not k.startswith("compression.")}
    config = dataclasses.asdict(RunConfig.from_flower(rest))
    config["compression"] = {
        "scheme": run_config["compression.scheme"],
        "topk_fraction": run_config.get("compression.topk-fraction", 0.01),
    }
    return config


def test_a_whole_study_writes_its_report_and_resumes(
    tmp_path: Path,
    mnist_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "out"
    argv = argv_for(
        mnist_dir, "--rounds", "3", "--num-supernodes", "20",
        "--topk-fractions", "0.01,0.1", "--out", str(out),
    )  # fmt: skip
    runner = CompressionRunner()
    # The report is redrawn after every run; matplotlib takes most of a second a
    # plot, so the study's plots are recorded and only the last one drawn.
    plot = study.plot_upload_curves
    plots: list[tuple[Any, ...]] = []
    monkeypatch.setattr(
        study, "plot_upload_curves", lambda *a, **k: plots.append((a, k))
    )
    assert study.main(argv, runner=runner) == 0
    assert len(plots) == 13  # after each run, and once at the end
    (path, panels), options = plots[-1]
    assert path == out.resolve() / "compression.png"
    assert list(panels) == ["IID", study.PANEL["dirichlet"]]
    assert list(panels["IID"]) == [
        "none", "fp16", "int8", "topk-0.01", "topk-0.1", "sign",
    ]  # fmt: skip
    assert panels["IID"]["sign"] == json.loads(
        (out / "runs" / "sign-iid" / "history.json").read_text()
    )
    assert options["title"] == "2NN on mnist, 20 clients, C=0.1, fedavg"
    plot(path, panels, **options)  # the real one, once
    assert [(c["compression.scheme"], c["partitioner"]) for c in runner.calls] == [
        ("none", "iid"), ("fp16", "iid"), ("int8", "iid"), ("topk", "iid"),
        ("topk", "iid"), ("sign", "iid"),
        ("none", "dirichlet"), ("fp16", "dirichlet"), ("int8", "dirichlet"),
        ("topk", "dirichlet"), ("topk", "dirichlet"), ("sign", "dirichlet"),
    ]  # fmt: skip
    assert [c.get("compression.topk-fraction") for c in runner.calls[3:5]] == [
        0.01,
        0.1,
    ]
    assert {c["min-available-clients"] for c in runner.calls} == {20}
    assert sorted(p.name for p in (out / "runs").iterdir()) == sorted(
        f"{k}-{p}"
        for k in ["none", "fp16", "int8", "topk-0.01", "topk-0.1", "sign"]
        for p in ("iid", "dirichlet")
    )
    printed = capsys.readouterr().out
    assert printed.startswith("12 runs: none, fp16, int8, topk-0.01, topk-0.1, sign")
    assert "[1/12] none iid: 85.0% after 3 rounds" in printed
    assert f"upload 250.0 kB per round, 32.0{X} fewer than none" in printed

    report = (out / "compression.md").read_text()
    assert "| none | 8.00 MB | baseline | 85.00% | baseline |" in report
    assert f"| int8 | 2.00 MB | 4.00{X} | 84.50% | -0.50 |" in report
    # The fake's topk sends the same bytes at either fraction.
    assert f"| topk-0.1 | 160.0 kB | 50.0{X} | 84.00% | -1.00 |" in report
    assert f"| sign | 250.0 kB | 32.0{X} | 82.00% | -3.00 |" in report
    assert "met on IID and Dirichlet." in report
    assert f"met by topk-0.01 (50.0{X}, -1.00 points)" in report
    assert "(k = 0.01, 0.1)" in report
    assert "2nn on mnist, C=0.1, E=1, B=10, client lr 0.1, seed 42" in report
    assert "python scripts/compression_study.py --dataset mnist" in report
    assert "- machine: " in report
    assert (out / "compression.png").read_bytes()[:8] == PNG
    numbers = json.loads((out / "compression.json").read_text())
    assert numbers["rounds"] == 3 and numbers["topk_fractions"] == [0.01, 0.1]
    assert numbers["schemes"] == [
        "none", "fp16", "int8", "topk-0.01", "topk-0.1", "sign",
    ]  # fmt: skip
    by_name = {run["name"]: run for run in numbers["runs"]}
    assert len(by_name) == 12
    sign = by_name["sign-dirichlet"]
    assert sign["upload_ratio"] == pytest.approx(32.0)
    assert sign["accuracy_change_points"] == -3.0
    assert sign["bytes_received"] == [0, 250000.0, 250000.0, 250000.0]
    assert by_name["topk-0.1-iid"]["topk_fraction"] == 0.1
    assert numbers["goals"]["iid"][0]["schemes"] == ["topk-0.01", "topk-0.1", "int8"]
    assert numbers["config"]["compression"]["scheme"] == "none"

    again = CompressionRunner()
    assert study.main(argv, runner=again) == 0
    assert again.calls == []
    assert "12 of them reused" in (out / "compression.md").read_text()
