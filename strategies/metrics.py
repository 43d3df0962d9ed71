"""What a round's history row is made of, beyond the rule: the clients' metrics
averaged by n_k, the counts of clients and bytes, the simulated attackers among the
sampled, the warning for each failed client."""

from __future__ import annotations

import math
from collections import Counter
from logging import WARNING

from flwr.common import FitRes, Parameters, Scalar, log
from flwr.server.client_proxy import ClientProxy

from fl_app import keys
from fl_app.attacks import attacking_partitions
from fl_app.config import RunConfig
from fl_app.results import RoundRecord
from strategies.validation import REASONS


def new_record(server_round: int) -> RoundRecord:
    """An empty row for a round, with a zero count for every rejection reason, so
    every run's history has the same columns."""
    return RoundRecord(
        round=server_round,
        test_loss=math.nan,
        test_accuracy=math.nan,
        rejected=dict.fromkeys(REASONS, 0),
    )


def parameters_nbytes(parameters: Parameters) -> int:
    """Bytes of the serialized tensors, i.e. what crosses the wire for the weights."""
    return sum(len(tensor) for tensor in parameters.tensors)


def count_replies(
    record: RoundRecord,
    results: list[tuple[ClientProxy, FitRes]],
    failures: list[tuple[ClientProxy, FitRes] | BaseException],
    num_valid: int,
) -> None:
    """The round's counts of replies (succeeded, failed, rejected) and bytes
    received, once they are in; ``record.clients_sampled`` is already set."""
    record.clients_succeeded = len(results)
    # Counted from the clients sampled, not the failures listed: a packed message
    # that failed is one failure for several clients, and SecAggPlusWorkflow lists
    # each failure twice.
    record.clients_failed = (
        record.clients_sampled - len(results)
        if record.clients_sampled
        else len(failures)
    )
    record.clients_rejected = len(results) - record.clients_late - num_valid
    record.bytes_received = sum(parameters_nbytes(r.parameters) for _, r in results)
    seconds = [r.metrics.get(keys.TRAIN_SECONDS) for _, r in results]
    timed = [float(s) for s in seconds if isinstance(s, (int, float))]
    record.train_seconds_max = max(timed, default=math.nan)


def clients_by_node(results: list[tuple[ClientProxy, FitRes]]) -> str:
    """``"<node>:<clients> ..."``: how many replies each Ray node trained (the
    first 8 hex digits of its id; ``ray status`` lists the whole id), by node id;
    "" when no reply names one (clients outside Ray)."""
    counts = Counter(str(res.metrics.get(keys.RAY_NODE, ""))[:8] for _, res in results)
    counts.pop("", None)
    return " ".join(f"{node}:{counts[node]}" for node in sorted(counts))


def attackers_among(config: RunConfig, num_partitions: int, sampled: list[int]) -> int:
    """How many ``sampled`` partitions are simulated attackers, for the history's
    count only: the rules never see it (the clients work out their role from the run
    config themselves)."""
    attack = config.attack
    if not attack.enabled or num_partitions == 0:
        return 0
    attackers = attacking_partitions(config.seed, num_partitions, attack.fraction)
    return sum(partition in attackers for partition in sampled)


def weighted_metrics(metrics: list[tuple[int, dict[str, Scalar]]]) -> dict[str, Scalar]:
    """Σ n_k m_k / Σ n_k for every float metric the clients report (loss, accuracy).

    Identifiers such as ``partition_id`` (ints) are not averaged.
    """
    sums: dict[str, float] = {}
    weights: dict[str, int] = {}
    for num_examples, client_metrics in metrics:
        for key, value in client_metrics.items():
            if isinstance(value, float) and math.isfinite(value) and num_examples > 0:
                sums[key] = sums.get(key, 0.0) + num_examples * value
                weights[key] = weights.get(key, 0) + num_examples
    return {key: sums[key] / weights[key] for key in sums}


def log_failures(
    server_round: int, failures: list[tuple[ClientProxy, FitRes] | BaseException]
) -> None:
    """One warning per failed client: the exception, or the node's status."""
    for failure in failures:
        if isinstance(failure, BaseException):
            reason = f"{type(failure).__name__}: {failure}"
        else:
            proxy, res = failure
            reason = f"node {proxy.cid}: {res.status.code.name} {res.status.message}"
        log(WARNING, "round %s: a client failed: %s", server_round, reason)
