r"""What SecAgg+ costs against the plain path, in seconds and bytes per round.

    .venv/bin/python scripts/secagg_cost.py          # 2 runs, about 3 min

Runs workload W (Fashion-MNIST, the 2NN, 100 clients IID, C = 0.1, E = 1, B = 10,
10 rounds) twice on one SuperLink, plain and with ``secagg.enabled`` (default
knobs; ``validation.max-update-norm=0``, which SecAgg+ requires), and prints:

* seconds per steady round (median of rounds 2..R) and round 1, from the history;
* upload bytes per client and round: the plain path's is measured from the replies
  (``bytes_received``); SecAgg+'s masked vector travels in the protocol's own
  records, so it is computed by running Flower's own quantize-and-mask functions
  on the model's shapes and serializing the result (the key exchange adds a few
  hundred bytes per client and stage, not counted);
* final accuracy, which must agree within the quantization error.

Results go to ``outputs/secagg-cost/`` (``secagg-cost.md``, ``secagg-cost.json``);
finished runs are reused on a second invocation.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from fl_app.files import write_json, write_text
from fl_app.model import build_model, get_weights
from fl_app.studies.cli import DEFAULT_DATA_DIRS, run_cli, study_parser
from fl_app.studies.driver import PlannedRun, RunResult, Study
from fl_app.studies.report import MODEL, markdown_table

CLIENTS = 100


def masked_vector_bytes(model: str, clipping_range: float, levels: int) -> int:
    """Bytes of one client's serialized SecAgg+ masked vector, from Flower's code."""
    from flwr.common import ndarray_to_bytes
    from flwr.common.secure_aggregation.ndarrays_arithmetic import (
        factor_combine,
        parameters_addition,
        parameters_mod,
    )
    from flwr.common.secure_aggregation.quantization import quantize
    from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen

    weights = get_weights(build_model(model))
    quantized = quantize([np.zeros_like(w) for w in weights], clipping_range, levels)
    vector = factor_combine(1, quantized)
    mask = pseudo_rand_gen(b"\0" * 32, 2**32, [v.shape for v in vector])
    masked = parameters_mod(parameters_addition(vector, mask), 2**32)
    return sum(len(ndarray_to_bytes(v)) for v in masked)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = study_parser(__doc__)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIRS["fashion-mnist"])
    parser.add_argument("--out", type=Path, default=Path("outputs/secagg-cost"))
    args = parser.parse_args(argv)
    if args.rounds < 2:
        parser.error("--rounds must be >= 2 (round 1 also pays for start-up)")
    return args


class SecAggCost(Study):
    """Plain against SecAgg+, one run each; the report needs both."""

    script = "scripts/secagg_cost.py"
    report_name = "secagg-cost.md"

    def __init__(self, args: argparse.Namespace, argv: Sequence[str]) -> None:
        super().__init__(args)  # the report's command, without argv: as before

    def plan(self) -> list[PlannedRun]:
        base: dict[str, Any] = {
            "num-server-rounds": self.args.rounds,
            "dataset": "fashion-mnist",
            "data-dir": self.args.data_dir,
            "min-available-clients": CLIENTS,
            "validation.max-update-norm": 0.0,  # SecAgg+ requires it
        }
        secure = {**base, "secagg.enabled": True}
        return [
            PlannedRun("plain", "plain", base, CLIENTS),
            PlannedRun("secagg", "secagg", secure, CLIENTS),
        ]

    def write_report(
        self, results: Mapping[str, RunResult], wall_seconds: float
    ) -> None:
        """``secagg-cost.md`` and ``secagg-cost.json``, once both runs finished."""
        if "plain" not in results or "secagg" not in results:
            return
        plain, secure = results["plain"].rows, results["secagg"].rows
        clients = plain[1]["clients_succeeded"]
        plain_up = statistics.mean(r["bytes_received"] for r in plain[1:]) / clients
        secure_up = masked_vector_bytes(MODEL, 8.0, 4194304)
        rows = []
        for name, history, up in (
            ("plain", plain, plain_up),
            ("SecAgg+", secure, secure_up),
        ):
            seconds = [r["round_seconds"] for r in history[1:]]
            rows.append(
                [
                    name,
                    f"{statistics.median(seconds[1:]):.2f}",
                    f"{seconds[0]:.1f}",
                    f"{up / 1e6:.2f}",
                    f"{100 * history[-1]['test_accuracy']:.2f}%",
                ]
            )
        headers = ["path", "steady s/round", "round 1 s"]
        headers += ["MB up per client and round", "final accuracy"]
        self.table = (
            f"{markdown_table(headers, rows)}\n\nW, {self.args.rounds} rounds, one "
            f"run each; {time.strftime('%Y-%m-%d')}; wall time {wall_seconds:.0f} s "
            f"(`{self.command}`)\n"
        )
        write_text(self.out / "secagg-cost.md", self.table)
        write_json(
            self.out / "secagg-cost.json",
            {"plain": plain, "secagg": secure, "up_bytes": [plain_up, secure_up]},
        )


main = partial(run_cli, parse_args, SecAggCost)
