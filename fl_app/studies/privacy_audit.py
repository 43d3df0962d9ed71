r"""What a curious server and a model's users learn, under each defence the app has.

    .venv/bin/python scripts/privacy_audit.py

Fashion-MNIST (``/usr/share/datasets/fashion-mnist``), the 2NN, E = 1, B = 10,
lr = 0.1, C = 0.1, 10 rounds, through ``flwr run`` on one SuperLink:

* **the default job** (100 clients, 540 training examples each) with no defence,
  and **a cross-device population** (``--num-supernodes``, 1,000 clients of 54
  examples, 100 a round) with no defence, ``compression.scheme`` sign and topk,
  SecAgg+, central DP and local DP at the ``--central`` and ``--local`` noise
  multipliers (``dp.clip-norm`` = ``--clip-norm``). Each keeps round 1's updates
  as its server held them (``audit.capture-round = 1``); the attack separates each
  of ``--clients`` clients' images out of its update (``fl_app.audit.separation``)
  and the report gives the share recovered, PSNR, SSIM, and the accuracy each
  defence costs;
* **membership and canaries**: ``--shadows`` runs per setting (no DP, then central
  DP at each ``--central`` z), each on a seeded half of the data with 10% canary
  clients (``attack.kind = canary``): the loss-threshold attack and LiRA (each run
  the target in turn, the others its shadows), and Andrew et al.'s empirical ε
  from the canaries beside the accountant's;
* **FedSGD in this process** (no flwr run: the app's client replying to one step
  on one example or one batch, read back through the server's decoding): the
  analytic first-layer attack (B = 1), gradient matching (DLG/iDLG, B = 4) and the
  separation of a SecAgg+ sum, under each defence.

It writes ``outputs/privacy-audit/``: ``privacy-audit.md`` (the tables),
``privacy-audit.json``, ``reconstructions.png`` (each attack's originals above what
it recovered under each defence) and ``runs/``. Re-running skips finished runs.
A quick try:

    .venv/bin/python scripts/privacy_audit.py --rounds 2 --num-supernodes 200 \
        --shadows 2 --clients 2 --out outputs/privacy-audit-smoke
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

from fl_app.studies.cli import (
    add_common_arguments,
    check_common_arguments,
    hide,
    option,
    run_cli,
    run_config,
    study_parser,
)
from fl_app.studies.driver import PlannedRun, RunResult, Study
from fl_app.studies.privacy_audit_report import slug, write_report

DEFAULT_JOB_CLIENTS = 100  # the app's default job: 100 clients of 600 examples
CANARY_FRACTION = 0.1


def _multipliers(parser: argparse.ArgumentParser, name: str, text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        parser.error(f"{name}: comma-separated numbers, got {text!r}")
    if any(not v > 0 for v in values):
        parser.error(f"{name}: noise multipliers must be > 0")
    return values


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = study_parser(__doc__)
    add_common_arguments(
        parser,
        default_out="outputs/privacy-audit",
        default_strategies=("fedavg",),
        default_rounds=10,
    )
    hide(parser, "--strategies")
    parser.set_defaults(num_supernodes=1000)
    option(parser, "--num-supernodes").help = "the audit's population (1000)"
    parser.add_argument("--clip-norm", type=float, default=1.0, help="dp.clip-norm S")
    parser.add_argument(
        "--central", default="0.5,1", help="central DP noise multipliers (0.5,1)"
    )
    parser.add_argument(
        "--local", default="0.01,0.1", help="local DP noise multipliers (0.01,0.1)"
    )
    parser.add_argument(
        "--shadows", type=int, default=4, help="membership runs per setting (4)"
    )
    parser.add_argument(
        "--clients", type=int, default=10, help="captured clients attacked (10)"
    )
    parser.add_argument(
        "--skip-fedsgd", action="store_true", help="leave out the in-process part"
    )
    args = parser.parse_args(argv)
    check_common_arguments(parser, args)
    args.central = _multipliers(parser, "--central", args.central)
    args.local = _multipliers(parser, "--local", args.local)
    if not args.clip_norm > 0:
        parser.error("--clip-norm must be > 0")
    if args.shadows < 2:
        parser.error("--shadows must be >= 2 (each run is the others' shadow)")
    if args.clients < 1:
        parser.error("--clients must be >= 1")
    return args


def defences(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Defence name -> the run-config knobs that turn it on."""
    dp = {"dp.clip-norm": args.clip_norm, "dp.noise-seed": args.seed}
    found: dict[str, dict[str, Any]] = {
        "none": {},
        "sign": {"compression.scheme": "sign"},
        "topk": {"compression.scheme": "topk"},
        "secagg": {"secagg.enabled": True, "validation.max-update-norm": 0.0},
    }
    for z in args.central:
        found[f"central z={z:g}"] = {**dp, "dp.noise-multiplier": z}
    for z in args.local:
        found[f"local z={z:g}"] = {**dp, "dp.mode": "local", "dp.noise-multiplier": z}
    return found


class PrivacyAudit(Study):
    """The plan (reconstruction runs, membership runs) and the report."""

    script = "scripts/privacy_audit.py"
    report_name = "privacy-audit.md"

    def __init__(self, args: argparse.Namespace, argv: Sequence[str]) -> None:
        super().__init__(args, argv)
        self.defences = defences(args)
        self.settings = ["none", *(f"central z={z:g}" for z in args.central)]
        self.cache: dict[str, Any] = {}  # run name -> its analysis (runs are final)

    # ------------------------------------------------------------------ plan
    def plan(self) -> list[PlannedRun]:
        args = self.args
        base = {**run_config(args, "fedavg", "iid"), "audit.capture-round": 1}
        runs = [
            PlannedRun(
                "default-none",
                f"default job ({DEFAULT_JOB_CLIENTS} clients), no defence",
                {**base, "min-available-clients": DEFAULT_JOB_CLIENTS},
                DEFAULT_JOB_CLIENTS,
            )
        ]
        for name, knobs in self.defences.items():
            runs.append(PlannedRun(slug(name), name, {**base, **knobs}, self.clients))
        for setting in self.settings:
            knobs = self.defences[setting]
            for half in range(args.shadows):
                config = {
                    **run_config(args, "fedavg", "iid"),
                    **knobs,
                    **self.own_noise(knobs, half),
                    "audit.half-seed": half,
                    "attack.kind": "canary",
                    "attack.fraction": CANARY_FRACTION,
                    "attack.factor": args.clip_norm,
                }
                runs.append(
                    PlannedRun(
                        f"mia-{slug(setting)}-h{half}",
                        f"membership {setting}, half {half}",
                        config,
                        self.clients,
                    )
                )
        return runs

    def own_noise(self, knobs: Mapping[str, Any], half: int) -> dict[str, Any]:
        """Each membership run its own DP noise: the shadows must not share the
        target's noise, which an attacker cannot know."""
        if "dp.noise-seed" not in knobs:
            return {}
        return {"dp.noise-seed": self.args.seed + 1 + half}

    def headline(self, planned: int) -> str:
        return (
            f"{planned} runs: the default job, {len(self.defences)} defences on "
            f"{self.clients} clients, {self.args.shadows} membership runs for each "
            f"of {', '.join(self.settings)}; results in {self.out}"
        )

    # ------------------------------------------------------------------ report
    def write_report(
        self, results: Mapping[str, RunResult], wall_seconds: float
    ) -> None:
        write_report(self, results, wall_seconds)


main = partial(run_cli, parse_args, PrivacyAudit)
