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
import sys
import time
from pathlib import Path

import numpy as np

from fl_app.model import build_model, get_weights
from fl_app.studies.driver import Study, markdown_table, write_results, write_text

DATA_DIR = "/usr/share/datasets/fashion-mnist"


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--data-dir", default=DATA_DIR)
    parser.add_argument("--out", type=Path, default=Path("outputs/secagg-cost"))
    args = parser.parse_args(argv)
    if args.rounds < 2:
        parser.error("--rounds must be >= 2 (round 1 also pays for start-up)")
    base = {
        "num-server-rounds": args.rounds,
        "dataset": "fashion-mnist",
        "data-dir": args.data_dir,
        "min-available-clients": 100,
        "validation.max-update-norm": 0.0,
    }
    started = time.monotonic()
    with Study(args.out, total=2) as study:
        plain = study.run("plain", base, 100)
        secure = study.run("secagg", {**base, "secagg.enabled": True}, 100)
    clients = plain[1]["clients_succeeded"]
    plain_up = statistics.mean(r["bytes_received"] for r in plain[1:]) / clients
    secure_up = masked_vector_bytes("2nn", 8.0, 4194304)
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
    table = markdown_table(
        [
            "path",
            "steady s/round",
            "round 1 s",
            "MB up per client and round",
            "final accuracy",
        ],
        rows,
    )
    wall = time.monotonic() - started
    text = (
        f"{table}\n\nW, {args.rounds} rounds, one run each; "
        f"{time.strftime('%Y-%m-%d')}; wall time {wall:.0f} s "
        f"(`python scripts/secagg_cost.py`)\n"
    )
    out = args.out.resolve()
    write_text(out / "secagg-cost.md", text)
    write_results(
        out / "secagg-cost.json",
        {"plain": plain, "secagg": secure, "up_bytes": [plain_up, secure_up]},
    )
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
