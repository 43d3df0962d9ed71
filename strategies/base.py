"""The project's base strategy: Flower's FedAvg plus what every strategy here shares.

Each round runs one pipeline, the same for every strategy:

1. **sample** (``configure_fit``): Flower's own ``configure_fit`` (and that of the
   Flower strategy a subclass mixes in, e.g. ``FedProx`` adding ``proximal_mu``)
   runs unchanged, but draws its clients through a seeded view of the client manager:
   a draw over partition ids from ``(seed, round)``, since Flower samples with the
   unseeded ``random`` module and node ids are random in every run;
2. **order** replies by partition id, so float sums do not depend on arrival order;
3. **validate** each reply (``strategies.validation``), after decoding it when
   clients compress (``compression.scheme``): a malformed one is dropped with its
   reason and counted, never aggregated. Under SecAgg+ every reply carries the same
   aggregate, and the pipeline checks that it does;
4. **privatize** when central DP is on (``fl_app.privacy``): clip, uniform weights,
   Gaussian noise;
5. **aggregate**: ``aggregate`` turns each update back into weights ``w_t + delta_k``
   and hands them to the rule next in the MRO: Flower's ``FedAvg`` here,
   ``FedAdam``/``Krum``/... in a subclass that mixes that Flower class in. This is
   the one step an algorithm overrides;
6. **record**: the round's ``RoundRecord`` (filled in by the steps above) gets the
   central test accuracy and goes to disk, with the model and the plot, before the
   next round starts.

Clients send updates ``w_k - w_t``, not weights: validation bounds, DP clipping,
compression and SecAgg+ all act on the same object. Flower numbers a resumed run's
rounds from 1; every callback adds ``round_offset``, the rounds the checkpoint held.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, replace
from functools import partial
from logging import INFO, WARNING
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from flwr.common import (
    Code,
    EvaluateIns,
    EvaluateRes,
    FitIns,
    FitRes,
    NDArrays,
    Parameters,
    Scalar,
    Status,
    log,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import FedAvg as FlowerFedAvg

from fl_app import keys
from fl_app import results as outputs
from fl_app.attacks import attacking_partitions
from fl_app.checkpoint import CHECKPOINT_FILE, save_checkpoint
from fl_app.config import ConfigError, RunConfig
from fl_app.data import load_split
from fl_app.files import write_json
from fl_app.model import build_model, get_weights, set_weights
from fl_app.privacy import PrivacyLedger, privatize
from fl_app.training import evaluate
from strategies.sampling import (
    EVALUATE_DRAW,
    FIT_DRAW,
    SeededDraw,
    SeededSampling,
)
from strategies.validation import (
    REASONS,
    Layout,
    Rejected,
    checked_arrays,
    decoded,
)

# Salt of the seeded DP noise (the draws' salts are in strategies.sampling).
_DP_NOISE = 2
# history.png is redrawn at most this often, and once more when the run ends: a
# drawing costs about 0.2 s (0.8 s with matplotlib's import), a whole steady round
# in the simulation. history.csv and the checkpoint are written every round.
PLOT_EVERY_S = 10.0


@dataclass
class ClientUpdate:
    """One valid reply: the model update, what the algorithm sent after it, n_k."""

    client: ClientProxy
    partition: int
    num_examples: int
    delta: NDArrays
    extras: NDArrays
    metrics: dict[str, Scalar]


class _WeightsRes(FitRes):
    """A client's ``FitRes`` for the rule next in the MRO, holding its weights
    ``w_t + delta``, serialized each time they are read and not kept: Flower's
    rules read each once, so a round's serialized models (80 MB at 100 clients)
    never exist all at once."""

    def __init__(self, strategy: BaseStrategy, update: ClientUpdate) -> None:
        self.status = Status(Code.OK, "")
        self.num_examples = update.num_examples
        self.metrics = {}
        self._weights = partial(strategy.weights_after, update.delta)

    @property  # type: ignore[override]
    def parameters(self) -> Parameters:
        return ndarrays_to_parameters(self._weights())


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


class BaseStrategy(SeededSampling, FlowerFedAvg):
    """Flower's FedAvg, seeded, validated, evaluated centrally, history on disk.

    ``**flower_kwargs`` go to the constructor of the Flower strategy a subclass mixes
    in (``Krum``'s ``num_malicious_clients``, ``FedAdam``'s ``eta``, ...).
    """

    #: Why central DP cannot wrap this strategy (None: it averages, so it can).
    dp_conflict: ClassVar[str | None] = None
    #: Why SecAgg+ cannot be used with this strategy (None: it averages).
    secagg_conflict: ClassVar[str | None] = None

    def __init__(
        self, config: RunConfig, run_dir: Path | None = None, **flower_kwargs: Any
    ) -> None:
        type(self).check_config(config)
        self.config = config
        self.run_dir = run_dir
        self.model = build_model(config.model, seed=config.seed)
        self.global_weights: NDArrays = get_weights(self.model)
        super().__init__(
            fraction_fit=config.fraction_fit,
            fraction_evaluate=config.fraction_evaluate,
            min_fit_clients=config.min_fit_clients,
            min_evaluate_clients=config.min_fit_clients,
            min_available_clients=config.min_available_clients,
            initial_parameters=ndarrays_to_parameters(self.global_weights),
            on_fit_config_fn=self.fit_config,
            on_evaluate_config_fn=lambda server_round: {
                keys.SERVER_ROUND: server_round
            },
            accept_failures=True,
            fit_metrics_aggregation_fn=weighted_metrics,
            evaluate_metrics_aggregation_fn=weighted_metrics,
            **flower_kwargs,
        )
        self.test_data = load_split(config.dataset, config.data_dir, "test")
        self.history: list[outputs.RoundRecord] = []
        self.privacy = PrivacyLedger(config.dp) if config.dp.enabled else None
        self.stop_reason: str | None = None
        self.round_offset = 0  # rounds done before this run: Flower counts from 1
        self.init_sampling()
        self._round = _new_record(0)
        self._started = self._round_started = self._plotted = time.monotonic()
        if run_dir is not None:
            write_json(run_dir / outputs.CONFIG_FILE, asdict(config))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(C={self.fraction_fit}, seed={self.config.seed})"

    @classmethod
    def check_config(cls, config: RunConfig) -> None:
        """Refuse, naming the key, a config this strategy cannot honour."""
        if config.dp.enabled and cls.dp_conflict is not None:
            raise ConfigError(
                "dp.clip-norm",
                f"central DP cannot wrap strategy {config.strategy!r}: "
                f"{cls.dp_conflict}",
            )
        if config.secagg.enabled:
            cls._check_secagg(config)

    @classmethod
    def _check_secagg(cls, config: RunConfig) -> None:
        """Under SecAgg+ the server sees only the sum: refuse what needs more."""
        if cls.secagg_conflict is not None:
            raise ConfigError(
                "secagg.enabled",
                f"SecAgg+ cannot be used with strategy {config.strategy!r}: "
                f"{cls.secagg_conflict}",
            )
        if config.validation.max_update_norm > 0:
            raise ConfigError(
                "validation.max-update-norm",
                "must be 0 with secagg.enabled: the bound is checked per update, "
                "and SecAgg+ hides each update from the server (bound the updates "
                "with secagg.clipping-range, or dp.clip-norm, instead)",
            )
        if config.compression.enabled:
            raise ConfigError(
                "compression.scheme",
                "must be 'none' with secagg.enabled: SecAgg+ sums its own fixed-point "
                "integers modulo 2^32, and a coded update (per-client scales, topk "
                "indices, sign bits) is not additive",
            )

    # ------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """What the rest of the run depends on, beyond the run config: the global
        model, the history, why it stopped, the privacy ledger. Subclasses add their
        own state (server moments, control variates) and call ``super()``.

        Sampling, local shuffling and seeded DP noise draw from generators seeded
        by (seed, round), so no RNG state needs keeping.
        """
        return {
            "round": self.history[-1].round if self.history else -1,
            "global_weights": [w.copy() for w in self.global_weights],
            "history": [asdict(record) for record in self.history],
            "stop_reason": self.stop_reason,
            "privacy": None if self.privacy is None else self.privacy.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state_dict()``'s output (made with the same config):
        Flower's next round 1 is round ``state["round"] + 1`` here."""
        self.global_weights = [np.array(w, copy=True) for w in state["global_weights"]]
        set_weights(self.model, self.global_weights)
        self.initial_parameters = ndarrays_to_parameters(self.global_weights)
        self.history = [outputs.RoundRecord(**row) for row in state["history"]]
        self.round_offset = max(int(state["round"]), 0)
        if self.history:
            self._started = time.monotonic() - self.history[-1].elapsed_seconds
        self.stop_reason = state["stop_reason"]
        if self.privacy is not None:
            self.privacy.load_state_dict(state["privacy"])

    # ------------------------------------------------------------- what clients see
    def fit_config(self, server_round: int) -> dict[str, Scalar]:
        """The instructions sent with the weights; override to change local training."""
        return {
            keys.SERVER_ROUND: server_round,
            keys.LEARNING_RATE: self.config.learning_rate,
            keys.LOCAL_EPOCHS: self.config.local_epochs,
            keys.BATCH_SIZE: self.config.batch_size,
            keys.SEED: self.config.seed,
            # Where clients keep state that outlives the run (fl_app.client_state).
            **(
                {keys.EXPERIMENT: self.run_dir.name} if self.run_dir is not None else {}
            ),
            # Central DP under SecAgg+: the server cannot clip what it cannot see.
            **(
                {keys.DP_CLIP: self.config.dp.clip_norm}
                if self.config.dp.enabled and self.config.secagg.enabled
                else {}
            ),
        }

    def fit_parameters(self, parameters: Parameters) -> Parameters:
        """What is sent down for training: the global weights, plus whatever an
        algorithm appends (SCAFFOLD's control variate)."""
        return parameters

    def expected_layout(self) -> Layout:
        """What a valid reply holds: the model update, plus an algorithm's extras."""
        return Layout.of(self.global_weights)

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        """Flower's configure_fit, with the seeded draw and the round's record."""
        server_round += self.round_offset
        self._round = _new_record(server_round)
        self._round_started = time.monotonic()
        if self.stop_reason is not None:
            return []
        self.global_weights = parameters_to_ndarrays(parameters)
        sampler = SeededDraw(self, client_manager, server_round, FIT_DRAW)
        instructions = [
            (client, self._addressed(client, ins))
            for client, ins in super().configure_fit(
                server_round, self.fit_parameters(parameters), sampler
            )
        ]
        if self.privacy is not None and self._over_budget(len(instructions)):
            return []
        attackers = self._attackers()
        self._round.clients_sampled = len(instructions)
        self._round.attackers_sampled = sum(
            self.partition_of(client) in attackers for client, _ in instructions
        )
        self._round.bytes_sent = sum(
            parameters_nbytes(ins.parameters) for _, ins in instructions
        )
        return instructions

    def configure_evaluate(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, EvaluateIns]]:
        server_round += self.round_offset
        if self.stop_reason is not None:
            return []
        sampler = SeededDraw(self, client_manager, server_round, EVALUATE_DRAW)
        return [
            (client, self._addressed(client, ins))
            for client, ins in super().configure_evaluate(
                server_round, parameters, sampler
            )
        ]

    def _attackers(self) -> frozenset[int]:
        """The simulated attackers, for the history's count only: the rules never
        see it (the clients work out their role from the run config themselves)."""
        attack = self.config.attack
        if not attack.enabled or self._num_partitions == 0:
            return frozenset()
        return attacking_partitions(
            self.config.seed, self._num_partitions, attack.fraction
        )

    # ------------------------------------------------------------- the pipeline
    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        """Order, validate, privatize, aggregate, record (see the module docstring)."""
        server_round += self.round_offset
        record = self._round
        for failure in failures:
            log(
                WARNING,
                "round %s: a client failed: %s",
                server_round,
                _describe(failure),
            )
        ordered = sorted(results, key=lambda pair: self.partition_of(pair[0]))
        if self.config.secagg.enabled:
            ordered = self._only_the_aggregate(ordered)
            if not ordered:
                return None, {}
        updates = self.validate(server_round, ordered)
        if self.privacy is not None:
            updates = self._privatize(server_round, updates)
        metrics = weighted_metrics([(u.num_examples, u.metrics) for u in updates])
        new_weights = self._new_weights(server_round, updates)
        if new_weights is None:
            log(WARNING, "round %s: the global model stays unchanged", server_round)
        elif self.privacy is not None:
            self.privacy.record(self._population, record.clients_sampled)
        record.clients_succeeded = len(results)
        record.clients_failed = len(failures)
        if self.config.secagg.enabled:  # SecAggPlusWorkflow lists each one twice
            record.clients_failed = record.clients_sampled - len(results)
        record.clients_rejected = len(results) - len(updates)
        record.bytes_received = sum(parameters_nbytes(r.parameters) for _, r in results)
        record.train_loss = float(metrics.get(keys.TRAIN_LOSS, math.nan))
        record.model_updated = new_weights is not None
        if self.privacy is not None:
            record.epsilon = self.privacy.epsilon()
        if new_weights is None:
            return None, metrics
        return ndarrays_to_parameters(new_weights), metrics

    def _only_the_aggregate(
        self, results: list[tuple[ClientProxy, FitRes]]
    ) -> list[tuple[ClientProxy, FitRes]]:
        """Under SecAgg+ every reply carries the same parameters, the average the
        masked sum gives: check it (recording how many distinct updates arrived),
        and cast it from SecAgg+'s float64 to the model's dtypes. Empty: refused."""
        distinct = {tuple(res.parameters.tensors) for _, res in results}
        self._round.extra["distinct_updates_seen"] = len(distinct)
        if len(distinct) > 1:
            log(
                WARNING,
                "round %s: SecAgg+ is on, yet %s different updates arrived; "
                "the model stays unchanged",
                self._round.round,
                len(distinct),
            )
            return []
        if not results:
            return results
        arrays = parameters_to_ndarrays(results[0][1].parameters)
        model = self.expected_layout().dtypes
        if len(arrays) == len(model):
            arrays = [a.astype(d) for a, d in zip(arrays, model, strict=True)]
        parameters = ndarrays_to_parameters(arrays)
        return [(proxy, replace(res, parameters=parameters)) for proxy, res in results]

    def _new_weights(
        self, server_round: int, updates: list[ClientUpdate]
    ) -> NDArrays | None:
        """The rule's result, in the model's dtypes, or None to keep the model."""
        if len(updates) < self.min_fit_clients:
            log(
                WARNING,
                "round %s: %s valid replies < min-fit-clients=%s",
                server_round,
                len(updates),
                self.min_fit_clients,
            )
            return None
        new_weights = self.aggregate(server_round, updates)
        if new_weights is None:
            return None
        # A rule's arithmetic may promote (Flower's FedAdam returns float64): the
        # model keeps its dtypes, and what crosses the wire its size.
        new_weights = [
            w.astype(g.dtype, copy=False)
            for w, g in zip(new_weights, self.global_weights, strict=True)
        ]
        if not _all_finite(new_weights):
            log(WARNING, "round %s: the aggregate is not finite", server_round)
            return None
        return new_weights

    def validate(
        self, server_round: int, results: list[tuple[ClientProxy, FitRes]]
    ) -> list[ClientUpdate]:
        """The replies that pass ``checked_arrays``; each rejection logged, counted."""
        layout = self.expected_layout()
        num_model = len(self.global_weights)
        bounds = self.config.validation
        updates = []
        codec = (
            self.config.compression.spec() if self.config.compression.enabled else None
        )
        model = Layout.of(self.global_weights)
        for client, res in results:
            try:
                if codec is not None:
                    res = decoded(res, codec, model)
                arrays = checked_arrays(
                    res,
                    layout,
                    num_update_arrays=num_model,
                    max_num_examples=bounds.max_num_examples,
                    max_update_norm=bounds.max_update_norm,
                )
            except Rejected as rejection:
                log(
                    WARNING,
                    "round %s: rejected the reply of node %s (partition %s): %s",
                    server_round,
                    client.cid,
                    self.partition_of(client),
                    rejection,
                )
                self._round.rejected[rejection.reason] += 1
                continue
            updates.append(
                ClientUpdate(
                    client=client,
                    partition=self.partition_of(client),
                    num_examples=res.num_examples,
                    delta=arrays[:num_model],
                    extras=arrays[num_model:],
                    metrics=res.metrics,
                )
            )
        return updates

    def aggregate(
        self, server_round: int, updates: list[ClientUpdate]
    ) -> NDArrays | None:
        """The aggregation rule: the next one in the MRO, on weights ``w_t + delta_k``.

        Override this (not ``aggregate_fit``) for a rule of your own; return the new
        global weights, or None to keep the current model.
        """
        results: list[tuple[ClientProxy, FitRes]] = [
            (update.client, _WeightsRes(self, update)) for update in updates
        ]
        parameters, _ = super().aggregate_fit(server_round, results, [])
        return None if parameters is None else parameters_to_ndarrays(parameters)

    def weights_after(self, delta: NDArrays) -> NDArrays:
        """``w_t + delta``: the weights a client's update leads to."""
        return [w + d for w, d in zip(self.global_weights, delta, strict=True)]

    # ------------------------------------------------------------- privacy
    def _privatize(
        self, server_round: int, updates: list[ClientUpdate]
    ) -> list[ClientUpdate]:
        seed = self.config.dp.noise_seed
        rng = np.random.default_rng(
            None if seed < 0 else [seed, server_round, _DP_NOISE]
        )
        noised = privatize([u.delta for u in updates], self.config.dp, rng)
        for update, delta in zip(updates, noised, strict=True):
            update.delta = delta
            update.num_examples = 1  # uniform weights: one client, one vote
        return updates

    def _over_budget(self, sample_size: int) -> bool:
        """Stop, with the reason, before a round would overspend ``dp.max-epsilon``."""
        budget = self.config.dp.max_epsilon
        assert self.privacy is not None
        if budget <= 0 or sample_size == 0:
            return False
        after = self.privacy.epsilon((self._population, sample_size))
        if after <= budget:
            return False
        self.stop_reason = (
            f"privacy budget: round {self._round.round} would bring epsilon to "
            f"{after:.3f} > dp.max-epsilon = {budget:g} (delta = "
            f"{self.config.dp.delta:g}); the model of round {self._round.round - 1} "
            "is final"
        )
        log(WARNING, "stopping: %s", self.stop_reason)
        self._write_summary()
        self._plot()
        return True

    # ------------------------------------------------------------- evaluation
    def evaluate(
        self, server_round: int, parameters: Parameters
    ) -> tuple[float, dict[str, Scalar]] | None:
        """Evaluate the global model on the test set and write the round's row."""
        server_round += self.round_offset
        if self.history and self.history[-1].round == server_round:
            # A resumed run: Flower evaluates its initial model, our last round.
            last = self.history[-1]
            return last.test_loss, {keys.ACCURACY: last.test_accuracy}
        if server_round > 0 and self.stop_reason is not None:
            return None
        self.global_weights = parameters_to_ndarrays(parameters)
        set_weights(self.model, self.global_weights)
        loss, accuracy = evaluate(self.model, self.test_data)
        now = time.monotonic()
        record = self._round
        record.test_loss, record.test_accuracy = loss, accuracy
        record.round_seconds = now - self._round_started if server_round else 0.0
        record.elapsed_seconds = now - self._started
        if self.privacy is not None and server_round == 0:
            record.epsilon = 0.0
        self.history.append(record)
        target = self.config.stop_at_accuracy
        if server_round > 0 and target > 0 and accuracy >= target:
            self.stop_reason = (
                f"stop-at-accuracy: round {server_round} reached test accuracy "
                f"{accuracy:.4f} >= {target:g}"
            )
            log(INFO, "stopping: %s", self.stop_reason)
        self._save()
        self._log_progress(record)
        return loss, {keys.ACCURACY: accuracy}

    def aggregate_evaluate(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, EvaluateRes]],
        failures: list[tuple[ClientProxy, EvaluateRes] | BaseException],
    ) -> tuple[float | None, dict[str, Scalar]]:
        """Flower's weighted averages of the clients' held-out loss and accuracy,
        added to the round's row."""
        server_round += self.round_offset
        loss, metrics = super().aggregate_evaluate(server_round, results, failures)
        if loss is not None and self.history and self.history[-1].round == server_round:
            self.history[-1].federated_loss = loss
            self.history[-1].federated_accuracy = float(
                metrics.get(keys.ACCURACY, math.nan)
            )
            self._save(with_model=False)
        return loss, metrics

    # ------------------------------------------------------------- output
    def _save(self, with_model: bool = True) -> None:
        if self.run_dir is None:
            return
        outputs.write_history(self.run_dir, self.history)
        if with_model:
            outputs.save_model(self.run_dir, self.model)
        last_round = self.history[-1].round if self.history else 0
        ending = self.stop_reason is not None or (
            last_round >= self.config.num_server_rounds
        )
        if ending or time.monotonic() - self._plotted >= PLOT_EVERY_S:
            self._plot()
        self._write_summary()
        save_checkpoint(self.run_dir / CHECKPOINT_FILE, self.state_dict(), self.config)

    def _plot(self) -> None:
        """``history.png``: accuracy and loss against rounds."""
        if self.run_dir is None or not self.history:
            return
        title = (
            f"{type(self).__name__} · {self.config.model} on {self.config.dataset}"
            f" · {self.config.partitioner} · C={self.config.fraction_fit:g}"
            f" E={self.config.local_epochs} B={self.config.batch_size or '∞'}"
        )
        outputs.plot_history(self.run_dir, self.history, title)
        self._plotted = time.monotonic()

    def _write_summary(self) -> None:
        """``summary.json``: final and best accuracy, epsilon, why the run stopped."""
        if self.run_dir is None or not self.history:
            return
        last = self.history[-1]
        best = max(self.history, key=lambda r: r.test_accuracy)
        write_json(
            self.run_dir / outputs.SUMMARY_FILE,
            {
                "strategy": self.config.strategy,
                "rounds_done": last.round,
                "final_test_accuracy": last.test_accuracy,
                "best_test_accuracy": best.test_accuracy,
                "best_round": best.round,
                "epsilon": None if math.isnan(last.epsilon) else last.epsilon,
                "stop_reason": self.stop_reason,
            },
        )

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
        clients = ""
        if done:
            clients = f" | clients {record.clients_succeeded}/{record.clients_sampled}"
            if record.clients_rejected:
                clients += f" ({record.clients_rejected} rejected)"
        privacy = f" | ε {record.epsilon:.2f}" if math.isfinite(record.epsilon) else ""
        log(
            INFO,
            "round %d/%d | test acc %.2f%% | test loss %.4f%s%s | elapsed %s | ETA %s",
            done,
            total,
            100 * record.test_accuracy,
            record.test_loss,
            clients,
            privacy,
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


def _new_record(server_round: int) -> outputs.RoundRecord:
    """An empty row for a round, with a zero count for every rejection reason."""
    return outputs.RoundRecord(
        round=server_round,
        test_loss=math.nan,
        test_accuracy=math.nan,
        rejected=dict.fromkeys(REASONS, 0),
    )


def _all_finite(arrays: NDArrays) -> bool:
    return all(np.isfinite(a).all() for a in arrays)


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
