"""The project's base strategy: Flower's FedAvg plus what every strategy here shares.

Each round runs one pipeline, the same for every strategy:

1. **sample** (``configure_fit``): Flower's own ``configure_fit`` (and that of the
   Flower strategy a subclass mixes in, e.g. ``FedProx`` adding ``proximal_mu``)
   runs unchanged, but draws its clients through a seeded view of the client manager
   (``strategies.sampling.ClientSampler``, held as ``sampler``): a draw over
   partition ids from ``(seed, round)``, since Flower samples with the unseeded
   ``random`` module and node ids are random in every run;
2. **order** replies by partition id, so float sums do not depend on arrival order;
3. **validate** each reply (``strategies.validation``), after decoding it when
   clients compress (``compression.scheme``): a malformed one is dropped with its
   reason and counted, never aggregated. Under SecAgg+ every reply carries the same
   aggregate, and the pipeline checks that it does (``strategies.secagg``);
4. **privatize** when central DP is on (``fl_app.privacy.CentralDp``, held as
   ``privacy``): clip, uniform weights, Gaussian noise; under local DP the updates
   arrive noised and ``privacy`` (``LocalDp``) only keeps each client's ledger;
5. **aggregate**: ``aggregate`` turns each update back into weights ``w_t + delta_k``
   and hands them to the rule next in the MRO: Flower's ``FedAvg`` here,
   ``FedAdam``/``Krum``/... in a subclass that mixes that Flower class in. This is
   the one step an algorithm overrides;
6. **record**: the round's ``RoundRecord`` (``round_record``, filled in by the steps
   above) gets the central test accuracy and goes to disk through the
   ``fl_app.results.Recorder`` (``recorder``), with the model and the plot, and the
   checkpoint is written: before the next round starts, or, where nothing in the
   next rounds depends on them (``overlaps_recording``), while the next round runs,
   at most one round behind the aggregation.

Clients send updates ``w_k - w_t``, not weights: validation bounds, DP clipping,
compression and SecAgg+ all act on the same object. Flower numbers a resumed run's
rounds from 1; every callback adds ``round_offset``, the rounds the checkpoint held.
"""

from __future__ import annotations

import copy
import math
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict
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
from fl_app.checkpoint import CHECKPOINT_FILE, save_checkpoint
from fl_app.config import RunConfig
from fl_app.data import load_split
from fl_app.model import build_model, get_weights, set_weights
from fl_app.privacy import check_central_dp, dp_ledger
from fl_app.results import Recorder, RoundRecord
from fl_app.training import evaluate
from strategies.clock import SystemClock
from strategies.metrics import (
    attackers_among,
    clients_by_node,
    count_replies,
    log_failures,
    new_record,
    parameters_nbytes,
    weighted_metrics,
)
from strategies.sampling import EVALUATE_DRAW, FIT_DRAW, ClientSampler
from strategies.secagg import check_secagg, only_the_aggregate
from strategies.validation import ClientUpdate, Layout, checked_aggregate, valid_updates


class _WeightsRes(FitRes):
    """A client's ``FitRes`` for the rule next in the MRO: its weights ``w_t + delta``,
    serialized when read and not kept (Flower's rules read each once), so a round's
    serialized models (80 MB at 100 clients) never exist all at once."""

    def __init__(self, strategy: BaseStrategy, update: ClientUpdate) -> None:
        self.status = Status(Code.OK, "")
        self.num_examples = update.num_examples
        self.metrics = {}
        self._weights = partial(strategy.weights_after, update.delta)

    @property  # type: ignore[override]
    def parameters(self) -> Parameters:
        return ndarrays_to_parameters(self._weights())


class BaseStrategy(FlowerFedAvg):
    """Flower's FedAvg, seeded, validated, evaluated centrally, history on disk.

    ``**flower_kwargs`` go to the constructor of the Flower strategy a subclass mixes
    in (``Krum``'s ``num_malicious_clients``, ``FedAdam``'s ``eta``, ...).
    """

    #: Why central DP cannot wrap this strategy (None: it averages, so it can).
    dp_conflict: ClassVar[str | None] = None
    #: Why SecAgg+ cannot be used with this strategy (None: it averages).
    secagg_conflict: ClassVar[str | None] = None
    #: Runs its own asynchronous loop (``strategies.async_rounds``), not Flower's
    #: synchronous rounds.
    asynchronous: ClassVar[bool] = False
    #: Round t's evaluation and files may run while round t+1 does
    #: (``overlaps_recording``); the ServerApp turns it on for Flower's loop, so a
    #: strategy driven by hand (tests, notebooks) records each round when asked.
    overlap_records = False

    def __init__(
        self, config: RunConfig, run_dir: Path | None = None, **flower_kwargs: Any
    ) -> None:
        type(self).check_config(config)
        self.config = config
        self.run_dir = run_dir
        # Packed messages keep each client's state in the node store, which the
        # run folder names; SecAgg+ needs a message per client.
        self.sampler = ClientSampler(
            config, can_pack=run_dir is not None and not config.secagg.enabled
        )
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
        self.privacy = dp_ledger(config.dp)
        #: The partitions sampled this round (the local DP ledger counts them).
        self.round_partitions: list[int] = []
        self.stop_reason: str | None = None
        self.round_offset = 0  # rounds done before this run: Flower counts from 1
        #: The current round's row, filled in by the pipeline's steps.
        self.round_record = new_record(0)
        #: Simulated devices' virtual clock (heterogeneity.*), None when off.
        self.clock = SystemClock(config) if config.heterogeneity.enabled else None
        if self.clock is not None:
            self.round_record.virtual_time_s = 0.0
            if config.heterogeneity.online_fraction < 1:
                clock, sampler = self.clock, self.sampler
                sampler.online = lambda: clock.online(sampler.num_partitions)
        #: Rows still being recorded while later rounds run (``overlaps_recording``).
        self._recording: deque[Future[Any]] = deque()
        self._recording_thread = ThreadPoolExecutor(1, thread_name_prefix="record")
        self.recorder = Recorder(config, run_dir, type(self).__name__)

    @property
    def history(self) -> list[RoundRecord]:
        """The rounds so far, round 0 (the initial model) first."""
        return self.recorder.history

    def __repr__(self) -> str:
        return f"{type(self).__name__}(C={self.fraction_fit}, seed={self.config.seed})"

    @classmethod
    def check_config(cls, config: RunConfig) -> None:
        """Refuse, naming the key, a config this strategy cannot honour."""
        if config.dp.central:
            check_central_dp(config, cls.dp_conflict)
        if config.secagg.enabled:
            check_secagg(config, cls.secagg_conflict)

    # ------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """What the rest of the run depends on beyond its config: the global model,
        the history, why it stopped, the privacy ledger, K (no RNG state: draws are
        seeded by (seed, round)). Subclasses add theirs and call ``super()``."""
        return {
            **self._recorded(),
            "global_weights": [w.copy() for w in self.global_weights],
            "stop_reason": self.stop_reason,
            "privacy": None if self.privacy is None else self.privacy.state_dict(),
            "num_partitions": self.sampler.num_partitions,
            "virtual_time": None if self.clock is None else self.clock.elapsed,
            "selection": self.sampler.selection.state_dict(),
        }

    def _recorded(self) -> dict[str, Any]:
        """The state's part that the recorder holds: the last round and the rows."""
        return {
            "round": self.recorder.last_round,
            "history": [asdict(record) for record in self.history],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue ``state_dict()`` (same config): Flower's round 1 is ours + 1."""
        self.global_weights = [np.array(w, copy=True) for w in state["global_weights"]]
        set_weights(self.model, self.global_weights)
        self.initial_parameters = ndarrays_to_parameters(self.global_weights)
        self.recorder.load(state["history"])
        self.round_offset = max(int(state["round"]), 0)
        self.stop_reason = state["stop_reason"]
        if self.privacy is not None:
            self.privacy.load_state_dict(state["privacy"])
        self.sampler.resume(int(state.get("num_partitions", 0)))
        if self.clock is not None:
            self.clock.elapsed = float(state.get("virtual_time") or 0.0)
        self.sampler.selection.load_state_dict(state.get("selection"))

    # ------------------------------------------------------------- what clients see
    def fit_config(self, server_round: int) -> dict[str, Scalar]:
        """The instructions sent with the weights; override to change local training."""
        config: dict[str, Scalar] = {
            keys.SERVER_ROUND: server_round,
            keys.LEARNING_RATE: self.config.learning_rate,
            keys.LOCAL_EPOCHS: self.config.local_epochs,
            keys.BATCH_SIZE: self.config.batch_size,
            keys.SEED: self.config.seed,
        }
        if self.run_dir is not None:
            # Where clients keep state that outlives the run (fl_app.client_state).
            config[keys.EXPERIMENT] = self.run_dir.name
        if self.config.dp.central and self.config.secagg.enabled:
            # Central DP under SecAgg+: the server cannot clip what it cannot see.
            config[keys.DP_CLIP] = self.config.dp.clip_norm
        return config

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
        record = self.round_record = new_record(server_round)
        self.recorder.start_round(server_round)
        if self.stop_reason is not None:
            return []
        self.global_weights = parameters_to_ndarrays(parameters)
        draw = self.sampler.draw(client_manager, server_round, FIT_DRAW)
        parameters = self.fit_parameters(parameters)
        instructions = self.sampler.addressed(
            super().configure_fit(server_round, parameters, draw)
        )
        self.round_partitions = [
            partition
            for client, _ in instructions
            for partition in self.sampler.partitions_of(client)
        ]
        if self.privacy is not None:
            self.stop_reason = self.privacy.before_round(
                server_round, self.sampler.drawn_from, self.round_partitions
            )
            if self.stop_reason is not None:
                log(WARNING, "stopping: %s", self.stop_reason)
                self.recorder.stopped(self.stop_reason)
                return []
        record.clients_sampled = len(self.round_partitions)
        if self.config.audit.enabled:
            self.recorder.sampled(server_round, self.round_partitions)
        record.attackers_sampled = attackers_among(
            self.config, self.sampler.num_partitions, self.round_partitions
        )
        # What each client receives, packed or not: the history counts clients.
        record.bytes_sent = sum(
            parameters_nbytes(ins.parameters) * len(self.sampler.partitions_of(client))
            for client, ins in instructions
        )
        return instructions

    def configure_evaluate(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, EvaluateIns]]:
        """Flower's configure_evaluate, with a seeded draw of its own (salted apart
        from the fit draw); none once the run has stopped."""
        server_round += self.round_offset
        if self.stop_reason is not None:
            return []
        draw = self.sampler.draw(client_manager, server_round, EVALUATE_DRAW)
        return self.sampler.addressed(
            super().configure_evaluate(server_round, parameters, draw)
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
        self.wait_for_record(behind=1)
        record = self.round_record
        log_failures(server_round, failures)
        results = self.sampler.unpacked(results)
        record.clients_by_node = clients_by_node(results)
        ordered = sorted(results, key=lambda pair: self.sampler.partition_of(pair[0]))
        replies = [(self.sampler.partition_of(pair[0]), pair) for pair in ordered]
        if self.clock is not None:
            ordered = self.clock.keep_on_time(
                replies,
                num_partitions=self.sampler.num_partitions,
                bytes_down=record.bytes_sent // max(record.clients_sampled, 1),
                keep=self.sampler.keep,
                record=record,
            )
        self.sampler.selection.observe(
            [(p, res.num_examples, res.metrics) for p, (_, res) in replies],
            {} if self.clock is None else self.clock.last_seconds,
        )
        if self.config.secagg.enabled:
            dtypes = self.expected_layout().dtypes
            ordered = only_the_aggregate(ordered, dtypes, record)
            if not ordered:
                return None, {}
        updates = self.validate(server_round, ordered)
        if server_round == self.config.audit.capture_round:
            # What a curious server holds: decoded, validated, not yet noised.
            # Under SecAgg+ every reply carries the same average: keep it once.
            held = updates[:1] if self.config.secagg.enabled else updates
            self.recorder.capture(
                server_round,
                self.global_weights,
                self.round_partitions,
                {
                    -1 if self.config.secagg.enabled else u.partition: (
                        u.num_examples,
                        u.delta,
                    )
                    for u in held
                },
            )
        if self.privacy is not None:
            self.privacy.privatize(server_round, updates)
        metrics = weighted_metrics([(u.num_examples, u.metrics) for u in updates])
        new_weights = self._new_weights(server_round, updates)
        if new_weights is None:
            log(WARNING, "round %s: the global model stays unchanged", server_round)
        if self.privacy is not None:
            self.privacy.released(
                self.sampler.drawn_from,
                self.round_partitions,
                aggregated=new_weights is not None,
            )
        count_replies(record, results, failures, len(updates))
        record.train_loss = float(metrics.get(keys.TRAIN_LOSS, math.nan))
        record.model_updated = new_weights is not None
        if self.privacy is not None:
            record.epsilon = self.privacy.epsilon()
        if new_weights is None:
            return None, metrics
        return ndarrays_to_parameters(new_weights), metrics

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
        return checked_aggregate(server_round, new_weights, self.global_weights)

    def validate(
        self, server_round: int, results: list[tuple[ClientProxy, FitRes]]
    ) -> list[ClientUpdate]:
        """The replies that pass ``strategies.validation``: each rejection logged,
        counted in the round's row, never aggregated."""
        return valid_updates(
            server_round,
            results,
            self.config,
            layout=self.expected_layout(),
            model=Layout.of(self.global_weights),
            partition_of=self.sampler.partition_of,
            rejected=self.round_record.rejected,
        )

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

    # ------------------------------------------------------------- evaluation
    def evaluate(
        self, server_round: int, parameters: Parameters
    ) -> tuple[float, dict[str, Scalar]] | None:
        """Evaluate the global model on the test set and write the round's row
        (now, or while the next round runs: ``overlaps_recording``)."""
        server_round += self.round_offset
        # Rows are written in order: one recorded now waits for all before it.
        self.wait_for_record(behind=1 if self.overlaps_recording(server_round) else 0)
        if self.history and self.history[-1].round == server_round:
            # A resumed run: Flower evaluates its initial model, our last round.
            last = self.history[-1]
            return last.test_loss, {keys.ACCURACY: last.test_accuracy}
        if server_round > 0 and self.stop_reason is not None:
            return None
        self.global_weights = parameters_to_ndarrays(parameters)
        if self.overlaps_recording(server_round):
            # What the checkpoint of this round holds, taken now: the next round's
            # aggregation may change it (in place, for some rules) meanwhile. The
            # rows are the recorder's, added to it when this one is written.
            state = self.state_dict()
            del state["round"], state["history"]
            state = copy.deepcopy(state)
            self._recording.append(
                self._recording_thread.submit(
                    self.record_round,
                    server_round,
                    self.round_record,
                    self.global_weights,
                    state,
                )
            )
            return None  # Flower's own History skips the round; ours has it
        return self.record_round(server_round, self.round_record, self.global_weights)

    def overlaps_recording(self, server_round: int) -> bool:
        """Whether round t's evaluation and files (``record_round``) may run while
        the next rounds are sent, trained and aggregated, instead of before them:
        only once the ServerApp allows it (``overlap_records``), where nothing in
        later rounds depends on them (no stop-at-accuracy, no DP ledger, no
        clients' evaluation to add to the row, not SecAgg+'s workflow), and never
        in the last round. They run in order in one thread, on the state the round
        ended with (copied when it ends); round t+2's aggregation waits for row t
        (``wait_for_record``), so a run that dies loses at most the rows of the
        rounds it was running. In a small round they are most of the server's
        time, and Flower hands out messages every 0.1 s: a round that waited for
        its predecessor's evaluation missed a tick."""
        config = self.config
        return (
            self.overlap_records
            and 0 < server_round < config.num_server_rounds
            and config.stop_at_accuracy == 0
            and config.fraction_evaluate == 0
            and self.privacy is None
            and not config.secagg.enabled
        )

    def wait_for_record(self, behind: int = 0) -> None:
        """Block until at most ``behind`` rows are still being recorded (re-raising
        a recording's error), oldest first."""
        while len(self._recording) > behind:
            self._recording.popleft().result()

    def record_round(
        self,
        server_round: int,
        record: RoundRecord,
        weights: NDArrays,
        state: dict[str, Any] | None = None,
    ) -> tuple[float, dict[str, Scalar]]:
        """Evaluate ``weights`` on the test set, fill in and write the round's row,
        the model and the checkpoint (of ``state``, the strategy's when the round
        ended, with this row added; default: ``state_dict()`` now), and log the
        progress line."""
        set_weights(self.model, weights)
        loss, accuracy = evaluate(self.model, self.test_data)
        record.test_loss, record.test_accuracy = loss, accuracy
        if self.privacy is not None and server_round == 0:
            record.epsilon = 0.0
        self.recorder.add(record)
        target = self.config.stop_at_accuracy
        if server_round > 0 and target > 0 and accuracy >= target:
            self.stop_reason = (
                f"stop-at-accuracy: round {server_round} reached test accuracy "
                f"{accuracy:.4f} >= {target:g}"
            )
            log(INFO, "stopping: %s", self.stop_reason)
        self._save(with_model=True, state=state)
        self.recorder.log_progress(record)
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
        last = self.history[-1] if self.history else None
        if loss is not None and last is not None and last.round == server_round:
            last.federated_loss = loss
            last.federated_accuracy = float(metrics.get(keys.ACCURACY, math.nan))
            self._save(with_model=False)
        return loss, metrics

    # ------------------------------------------------------------- output
    def _save(self, with_model: bool, state: dict[str, Any] | None = None) -> None:
        """The round's outputs, then the checkpoint (after every round, so a run
        that dies resumes from its last complete round): of ``state`` with the
        history as recorded so far, else of ``state_dict()``."""
        if self.run_dir is None:
            return
        model = self.model if with_model else None
        self.recorder.save(model, self.stop_reason)
        state = self.state_dict() if state is None else {**state, **self._recorded()}
        save_checkpoint(self.run_dir / CHECKPOINT_FILE, state, self.config)
