r"""How FedAvg and the robust rules fare when 20% of the clients attack.

    .venv/bin/python scripts/attack_study.py

runs fedavg, krum, multi-krum, median, trimmed-mean and centered-clipping with 100
virtual clients, C = 0.1, IID Fashion-MNIST (``/usr/share/datasets/fashion-mnist``)
and 30 rounds, first clean, then with 20% of the clients (``attack.fraction=0.2``,
drawn from the seed) sending ``-factor * update`` (``sign-flip``), then sending
``factor * update`` (``scale``); ``factor`` is ``attack.factor`` (``--factor``,
default the config's 10). 18 runs on one SuperLink. It writes to
``outputs/attacks/``:

* ``attacks.md``: per strategy the clean accuracy, the accuracy under each attack,
  the drop in points against that strategy's clean run, whether it stayed within 2
  points of clean (``--tolerance``), and the attackers sampled per round;
* ``attacks.png``: test accuracy against round, one panel per condition;
* ``attacks.json``: the raw numbers;
* ``runs/<strategy>-<condition>/``: each finished run (history, config, logs).

Running the same command again skips the runs already finished, so an interrupted
study (Ctrl-C) resumes where it stopped. A quick try:

    .venv/bin/python scripts/attack_study.py --rounds 2 \
        --strategies fedavg,median --num-supernodes 20 --out outputs/attacks-smoke
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Mapping, Sequence
from functools import partial
from typing import Any

from fl_app.config import ATTACKS
from fl_app.files import write_json, write_text
from fl_app.studies.cli import (
    add_common_arguments,
    check_common_arguments,
    run_cli,
    run_config,
    study_parser,
)
from fl_app.studies.driver import PlannedRun, RunResult, Study
from fl_app.studies.report import (
    FRACTION_FIT,
    describe_setup,
    final_accuracy,
    markdown_table,
    mean_per_round,
    percent,
    plot_curves,
    points,
)
from strategies import STRATEGIES

DEFAULT_STRATEGIES = (
    "fedavg",
    "krum",
    "multi-krum",
    "median",
    "trimmed-mean",
    "centered-clipping",
)
CLEAN = "clean"


def run_name(strategy: str, condition: str) -> str:
    return f"{strategy}-{condition}"


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Parse and validate; ``strategies`` and ``conditions`` (clean first) filled
    in."""
    parser = study_parser(__doc__)
    add_common_arguments(
        parser, default_out="outputs/attacks", default_strategies=DEFAULT_STRATEGIES
    )
    attacks = [a for a in ATTACKS if a != "none"]
    parser.add_argument(
        "--attacks",
        default="sign-flip,scale",
        help=f"comma-separated, from {', '.join(attacks)} (default: %(default)s)",
    )
    parser.add_argument(
        "--fraction",
        type=float,
        default=0.2,
        help="share of the clients that attack, attack.fraction (default: 0.2)",
    )
    parser.add_argument(
        "--factor",
        type=float,
        default=None,
        help="attack.factor: sign-flip sends -factor*update, scale factor*update "
        "(default: the config's, 10)",
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        default=2.0,
        help="accuracy points below clean that still count as unharmed (default: 2)",
    )
    args = parser.parse_args(argv)
    args.strategies = check_common_arguments(parser, args, STRATEGIES)
    chosen = [a.strip() for a in args.attacks.split(",") if a.strip()]
    if not chosen or any(a not in attacks for a in chosen):
        parser.error(f"--attacks: choose from {', '.join(attacks)}")
    if not 0 < args.fraction <= 1:
        parser.error("--fraction must be in (0, 1]")
    if args.factor is not None and not args.factor > 0:
        parser.error("--factor must be > 0")
    args.conditions = [CLEAN, *dict.fromkeys(chosen)]
    return args


class AttackStudy(Study):
    """Strategies x conditions; the report's table, verdicts, JSON and plot."""

    script = "scripts/attack_study.py"
    report_name = "attacks.md"

    def __init__(self, args: argparse.Namespace, argv: Sequence[str]) -> None:
        super().__init__(args, argv)
        self.strategies: list[str] = args.strategies
        self.conditions: list[str] = args.conditions
        self.attacks = [c for c in self.conditions if c != CLEAN]

    def plan(self) -> list[PlannedRun]:
        return self.grid(self.strategies, self.conditions, run_name, self.run_config)

    def run_config(self, strategy: str, condition: str) -> dict[str, Any]:
        """One run's ``--run-config``: IID, ``condition``'s attack."""
        args = self.args
        config = run_config(args, strategy, "iid")
        if condition == CLEAN:
            config["attack.kind"] = "none"
        else:
            config["attack.kind"] = condition
            config["attack.fraction"] = args.fraction
            if args.factor is not None:
                config["attack.factor"] = args.factor
        return config

    def headline(self, planned: int) -> str:
        return (
            f"{planned} runs: {len(self.strategies)} strategies x "
            f"{', '.join(self.conditions)}, {self.clients} clients, "
            f"C={FRACTION_FIT}, {self.args.rounds} rounds; results in {self.out}"
        )

    def write_report(
        self, results: Mapping[str, RunResult], wall_seconds: float
    ) -> None:
        """``attacks.md``, ``attacks.json`` and ``attacks.png``."""
        args = self.args
        tolerance = args.tolerance
        numbers = self.numbers(results)
        headers = ["strategy", "clean"]
        for attack in self.attacks:
            headers += [
                f"{attack}",
                f"{attack}: drop (points)",
                f"{attack}: within {tolerance:g} points",
            ]
        headers += ["attackers sampled per round", "replies rejected per round"]
        rows = []
        for strategy in self.strategies:
            entry = numbers[strategy]
            row: list[Any] = [strategy, percent(entry[CLEAN]["final_accuracy"])]
            for attack in self.attacks:
                found = entry[attack]
                drop = found["drop_points"]
                row += [
                    percent(found["final_accuracy"]),
                    None if drop is None else f"{drop:+.1f}",
                    None if drop is None else ("✓" if drop <= tolerance else "✗"),
                ]
            row += [
                _joined(entry[a]["attackers_per_round"] for a in self.attacks),
                _joined(entry[c]["rejected_per_round"] for c in self.conditions),
            ]
            rows.append(row)
        self.table = markdown_table(headers, rows)
        self.verdict = self.verdicts(numbers)

        runs = list(results.values())
        clean = next((r.config for r in runs if r.name.endswith(f"-{CLEAN}")), None)
        attacked = next(
            (r.config for r in runs if not r.name.endswith(f"-{CLEAN}")), None
        )
        config = clean or attacked or {}
        lines = [
            "# Robust aggregation under attack",
            self.setup_text(config, attacked),
            self.table.rstrip("\n"),
            "Accuracy: the global model's test accuracy after the last round. Drop: "
            "clean minus attacked, in percentage points (positive = worse). "
            f"✓: within {tolerance:g} points of the same strategy's clean run. "
            "Attackers sampled per round: the mean over the rounds, per attack "
            "(`a / b` when the attacks differ). Replies rejected per round: by the "
            "server's validation before aggregation, clean first, then per attack. "
            "'-': not run (yet).",
            "\n".join(f"- {line}" for line in self.verdict),
            "![test accuracy against round, per condition](attacks.png)",
            self.provenance(results, wall_seconds).rstrip("\n"),
        ]
        write_text(self.out / "attacks.md", "\n\n".join(lines) + "\n")
        write_json(
            self.out / "attacks.json",
            {
                **self.stamp(wall_seconds),
                "num_supernodes": self.clients,
                "rounds": args.rounds,
                "tolerance_points": tolerance,
                "config_clean": clean,
                "config_attacked": attacked,
                "strategies": numbers,
                "verdict": self.verdict,
            },
        )
        factor = (attacked or {}).get("attack", {}).get("factor")
        plot_curves(
            self.out / "attacks.png",
            self.curves(results, lambda c: _condition_title(c, factor)),
            title=f"{args.dataset}, IID, {self.clients} clients, "
            f"C={FRACTION_FIT}, {percent(args.fraction, 0)} attackers",
        )

    def numbers(self, results: Mapping[str, RunResult]) -> dict[str, Any]:
        """Per strategy and condition: final accuracy, drop, means per round."""
        numbers: dict[str, Any] = {}
        for strategy in self.strategies:
            entry: dict[str, Any] = {}
            for condition in self.conditions:
                run = results.get(run_name(strategy, condition))
                rows = run.rows if run else []
                entry[condition] = {
                    "final_accuracy": final_accuracy(rows),
                    "attackers_per_round": mean_per_round(rows, "attackers_sampled"),
                    "rejected_per_round": mean_per_round(rows, "clients_rejected"),
                    "seconds": run.seconds if run else None,
                    "test_accuracy": [row["test_accuracy"] for row in rows],
                }
            clean = entry[CLEAN]["final_accuracy"]
            for attack in self.attacks:
                drop = points(clean, entry[attack]["final_accuracy"])
                entry[attack]["drop_points"] = drop
            numbers[strategy] = entry
        return numbers

    def verdicts(self, numbers: dict[str, Any]) -> list[str]:
        """Did FedAvg degrade; which robust strategies stayed within tolerance."""
        tolerance = self.args.tolerance
        lines = []

        def within(strategy: str, attack: str) -> bool:
            drop = numbers[strategy][attack]["drop_points"]
            return drop is not None and drop <= tolerance

        if "fedavg" in numbers:
            drops = {a: numbers["fedavg"][a]["drop_points"] for a in self.attacks}
            known = {a: d for a, d in drops.items() if d is not None}
            if known:
                worse = [a for a, d in known.items() if d > tolerance]
                detail = ", ".join(f"{a} {d:+.1f} points" for a, d in known.items())
                lines.append(
                    f"FedAvg {'degraded' if worse else 'did not degrade'} "
                    f"(drop vs clean: {detail})"
                )
            else:
                lines.append("FedAvg: no clean/attacked pair finished yet")
        robust = [s for s in self.strategies if s != "fedavg"]
        if robust:
            held = [s for s in robust if all(within(s, a) for a in self.attacks)]
            lines.append(
                f"Within {tolerance:g} points of clean under "
                f"{'every attack' if len(self.attacks) > 1 else self.attacks[0]}: "
                f"{', '.join(held) or 'none'}"
                f" (of {', '.join(robust)})"
            )
            if len(self.attacks) > 1:
                for attack in self.attacks:
                    per = [s for s in robust if within(s, attack)]
                    lines.append(f"… under {attack} alone: {', '.join(per) or 'none'}")
        return lines

    def setup_text(
        self, config: dict[str, Any], attacked: dict[str, Any] | None
    ) -> str:
        args = self.args
        text = (
            f"{args.num_supernodes} virtual clients, IID, {args.rounds} rounds; "
            f"{describe_setup(config)}; every other knob at its pyproject.toml "
            "default."
        )
        if attacked:
            attack = attacked.get("attack", {})
            text += (
                f" Attackers: {percent(attack.get('fraction'), 0)} of the clients "
                f"(drawn from the seed), factor {attack.get('factor', 0):g}: sign-flip "
                "sends -factor x update, scale sends factor x update."
            )
        if config:
            krum = config.get("krum", {})
            text += (
                f" Rules at their defaults: krum.num-malicious = "
                f"{krum.get('num_malicious')}, trimmed-mean.beta = "
                f"{config.get('trimmed_mean', {}).get('beta')}, centered-clipping "
                f"tau = {config.get('centered_clipping', {}).get('tau')}; the server "
                "rejects updates of norm above validation.max-update-norm = "
                f"{config.get('validation', {}).get('max_update_norm')}."
            )
        return text


def _condition_title(condition: str, factor: float | None) -> str:
    if condition == CLEAN:
        return "clean"
    if condition in ("sign-flip", "scale") and factor is not None:
        return f"{condition} (factor {factor:g})"
    return condition


def _joined(values: Iterable[float | None]) -> str | None:
    """``2.0`` if every known value is the same, else ``2.0 / 1.5``; None if none."""
    texts = ["-" if v is None else f"{v:.1f}" for v in values]
    if all(t == "-" for t in texts):
        return None
    return texts[0] if len(set(texts)) == 1 else " / ".join(texts)


main = partial(run_cli, parse_args, AttackStudy)
