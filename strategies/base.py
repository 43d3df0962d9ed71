"""The project's base strategy: Flower's FedAvg plus what every strategy here shares.

Aggregation itself is Flower's ``FedAvg.aggregate_fit`` (``Σ n_k w_k / Σ n_k``); this
class adds what a run needs around it:

* seeded client sampling by partition id (Flower samples with the unseeded ``random``
  module, and node ids are random in every run, so neither is reproducible);
* results sorted by partition id before aggregation, so float sums do not depend on
  the order in which replies arrived;
* central evaluation of the global model on the test set after every round;
* a history row per round (accuracy, losses, clients, bytes, time) on disk before the
  next round starts, the global model as a ``state_dict`` and a plot;
* one progress line per round.

Subclasses change one thing each: ``fit_config`` for what clients are told,
``aggregate_fit`` for the aggregation rule.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from logging import INFO, WARNING
from pathlib import Path

import numpy as np
from flwr.common import (
    EvaluateIns,
    EvaluateRes,
    FitIns,
    FitRes,
    GetPropertiesIns,
    Parameters,
    Scalar,
    log,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import FedAvg as FlowerFedAvg

from fl_app import results as outputs
from fl_app.config import RunConfig
from fl_app.data import load_split
from fl_app.model import build_model, get_weights, set_weights
from fl_app.training import evaluate

# Salts that keep the fit and evaluate samples of one round independent.
_FIT, _EVALUATE = 0, 1


class NotEnoughClientsError(RuntimeError):
    """Fewer clients connected than the run needs, within the configured wait."""


def parameters_nbytes(parameters: Parameters) -> int:
    """Bytes of the serialized tensors, i.e. what crosses the wire for the weights."""
    return sum(len(tensor) for tensor in parameters.tensors)


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


class BaseStrategy(FlowerFedAvg):
    """Flower's FedAvg, seeded, evaluated centrally, with its history on disk."""

    def __init__(self, config: RunConfig, run_dir: Path | None = None) -> None:
        self.config = config
        self.run_dir = run_dir
        self.model = build_model(config.model, seed=config.seed)
        super().__init__(
            fraction_fit=config.fraction_fit,
            fraction_evaluate=config.fraction_evaluate,
            min_fit_clients=config.min_fit_clients,
            min_evaluate_clients=config.min_fit_clients,
            min_available_clients=config.min_available_clients,
            initial_parameters=ndarrays_to_parameters(get_weights(self.model)),
            accept_failures=True,
            fit_metrics_aggregation_fn=weighted_metrics,
            evaluate_metrics_aggregation_fn=weighted_metrics,
        )
        self.test_data = load_split(config.dataset, config.data_dir, "test")
        self.history: list[outputs.RoundRecord] = []
        self._partition_of: dict[str, int] = {}
        self._pending: dict[str, float | int] = {}
        self._started = time.monotonic()
        self._round_started = self._started
        if run_dir is not None:
            outputs.write_json(run_dir / outputs.CONFIG_FILE, asdict(config))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(C={self.fraction_fit}, seed={self.config.seed})"

    # ----------------------------------------------------------------- what clients see
    def fit_config(self, server_round: int) -> dict[str, Scalar]:
        """The instructions sent with the weights; override to change local training."""
        return {
            "server-round": server_round,
            "learning-rate": self.config.learning_rate,
            "local-epochs": self.config.local_epochs,
            "batch-size": self.config.batch_size,
            "seed": self.config.seed,
        }

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        self._round_started = time.monotonic()
        clients = self.sample_clients(
            client_manager, server_round, self.num_fit_clients, _FIT
        )
        fit_ins = FitIns(parameters, self.fit_config(server_round))
        self._pending = {
            "clients_sampled": len(clients),
            "bytes_sent": parameters_nbytes(parameters) * len(clients),
        }
        return [(client, fit_ins) for client in clients]

    def configure_evaluate(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, EvaluateIns]]:
        if self.fraction_evaluate == 0.0:
            return []
        clients = self.sample_clients(
            client_manager, server_round, self.num_evaluation_clients, _EVALUATE
        )
        evaluate_ins = EvaluateIns(parameters, {"server-round": server_round})
        return [(client, evaluate_ins) for client in clients]

    # ----------------------------------------------------------------- seeded sampling
    def sample_clients(
        self,
        client_manager: ClientManager,
        server_round: int,
        how_many: Callable[[int], tuple[int, int]],
        salt: int,
    ) -> list[ClientProxy]:
        """Choose clients reproducibly: a seeded draw over clients by partition."""
        needed = self.min_available_clients
        timeout = self.config.min_available_timeout
        if not client_manager.wait_for(needed, timeout=math.ceil(timeout)):
            raise NotEnoughClientsError(
                f"round {server_round}: only {client_manager.num_available()} of the "
                f"{needed} clients required by 'min-available-clients' connected "
                f"within 'min-available-timeout' = {timeout:g}s; start more SuperNodes "
                "or lower 'min-available-clients'"
            )
        available = client_manager.all()
        self._learn_partitions(available, server_round)
        known = [c for cid, c in available.items() if cid in self._partition_of]
        known.sort(key=lambda client: self._partition_of[client.cid])
        sample_size, _ = how_many(len(known))
        sample_size = min(sample_size, len(known))
        rng = np.random.default_rng([self.config.seed, server_round, salt])
        chosen = np.sort(rng.choice(len(known), size=sample_size, replace=False))
        return [known[i] for i in chosen]

    def _learn_partitions(
        self, available: dict[str, ClientProxy], server_round: int
    ) -> None:
        """Ask each node not met yet which partition it holds (once per node)."""
        new = [c for cid, c in available.items() if cid not in self._partition_of]
        if not new:
            return
        timeout = self.config.round_timeout or None

        def ask(client: ClientProxy) -> tuple[str, int | None]:
            try:
                res = client.get_properties(
                    GetPropertiesIns({}), timeout=timeout, group_id=server_round
                )
                return client.cid, int(res.properties["partition-id"])
            except Exception as error:
                log(
                    WARNING,
                    "node %s did not report its partition: %s",
                    client.cid,
                    error,
                )
                return client.cid, None

        with ThreadPoolExecutor(max_workers=min(32, len(new))) as pool:
            for cid, partition in pool.map(ask, new):
                if partition is not None:
                    self._partition_of[cid] = partition

    def partition_of(self, client: ClientProxy) -> int:
        return self._partition_of.get(client.cid, -1)

    # ----------------------------------------------------------------- aggregation
    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        """Record the round's replies, then aggregate them in partition order."""
        ordered = sorted(results, key=lambda pair: self.partition_of(pair[0]))
        for failure in failures:
            log(
                WARNING,
                "round %s: a client failed: %s",
                server_round,
                _describe(failure),
            )
        if len(ordered) >= self.min_fit_clients:
            parameters, metrics = super().aggregate_fit(server_round, ordered, failures)
        else:
            log(
                WARNING,
                "round %s: %s replies < min-fit-clients=%s; model unchanged",
                server_round,
                len(ordered),
                self.min_fit_clients,
            )
            parameters = None
            metrics = weighted_metrics(
                [(res.num_examples, res.metrics) for _, res in ordered]
            )
        self._pending.update(
            clients_succeeded=len(ordered),
            clients_failed=len(failures),
            bytes_received=sum(parameters_nbytes(res.parameters) for _, res in ordered),
            train_loss=float(metrics.get("train_loss", math.nan)),
        )
        return parameters, metrics

    # ----------------------------------------------------------------- evaluation
    def evaluate(
        self, server_round: int, parameters: Parameters
    ) -> tuple[float, dict[str, Scalar]] | None:
        """Evaluate the global model on the test set and write the round's row."""
        set_weights(self.model, parameters_to_ndarrays(parameters))
        loss, accuracy = evaluate(self.model, self.test_data)
        now = time.monotonic()
        pending, self._pending = self._pending, {}
        record = outputs.RoundRecord(
            round=server_round,
            test_loss=loss,
            test_accuracy=accuracy,
            round_seconds=now - self._round_started if server_round else 0.0,
            elapsed_seconds=now - self._started,
            **pending,  # type: ignore[arg-type]
        )
        self.history.append(record)
        self._save()
        self._log_progress(record)
        return loss, {"accuracy": accuracy}

    def aggregate_evaluate(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, EvaluateRes]],
        failures: list[tuple[ClientProxy, EvaluateRes] | BaseException],
    ) -> tuple[float | None, dict[str, Scalar]]:
        """Flower's weighted averages of the clients' held-out loss and accuracy,
        added to the round's row."""
        loss, metrics = super().aggregate_evaluate(server_round, results, failures)
        if loss is not None and self.history and self.history[-1].round == server_round:
            self.history[-1].federated_loss = loss
            self.history[-1].federated_accuracy = float(
                metrics.get("accuracy", math.nan)
            )
            self._save(with_model=False)
        return loss, metrics

    # ----------------------------------------------------------------- output
    def _save(self, with_model: bool = True) -> None:
        if self.run_dir is None:
            return
        outputs.write_history(self.run_dir, self.history)
        if with_model:
            outputs.save_model(self.run_dir, self.model)
        title = (
            f"{type(self).__name__} · {self.config.model} on {self.config.dataset}"
            f" · {self.config.partitioner} · C={self.config.fraction_fit:g}"
            f" E={self.config.local_epochs} B={self.config.batch_size or '∞'}"
        )
        outputs.plot_history(self.run_dir, self.history, title)

    def _log_progress(self, record: outputs.RoundRecord) -> None:
        total = self.config.num_server_rounds
        done = record.round
        # Round 1 also pays for start-up (actors, data): time later rounds from it.
        rounds = [r for r in self.history if r.round >= 1]
        if len(rounds) >= 2:
            per_round = (rounds[-1].elapsed_seconds - rounds[0].elapsed_seconds) / (
                len(rounds) - 1
            )
        else:
            per_round = record.elapsed_seconds / done if done else math.nan
        eta = per_round * (total - done)
        clients = (
            f" | clients {record.clients_succeeded}/{record.clients_sampled}"
            if done
            else ""
        )
        log(
            INFO,
            "round %d/%d | test acc %.2f%% | test loss %.4f%s | elapsed %s | ETA %s",
            done,
            total,
            100 * record.test_accuracy,
            record.test_loss,
            clients,
            _clock(record.elapsed_seconds),
            _clock(eta),
        )
        if done == total and self.run_dir is not None:
            best = max(self.history, key=lambda r: r.test_accuracy)
            log(
                INFO,
                "done: final test accuracy %.2f%% (best %.2f%% in round %d); "
                "results in %s",
                100 * record.test_accuracy,
                100 * best.test_accuracy,
                best.round,
                self.run_dir,
            )


def _clock(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "--"
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _describe(failure: tuple[ClientProxy, FitRes] | BaseException) -> str:
    if isinstance(failure, BaseException):
        return f"{type(failure).__name__}: {failure}"
    proxy, res = failure
    return f"node {proxy.cid}: {res.status.code.name} {res.status.message}"
