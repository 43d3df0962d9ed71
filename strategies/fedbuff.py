"""FedBuff: Nguyen et al., "Federated Learning with Buffered Asynchronous Aggregation",
AISTATS 2022 (arXiv:2106.06639), Algorithm 1.

The server keeps C clients (``fedbuff.concurrency``) training at all times, each from
the model that was current when it started. A reply computed from version tau that
reaches the server at version t is s = t - tau versions stale. Every K replies
(``fedbuff.buffer-size``) the server steps

    w_{t+1} = w_t + eta_g Σ_i (n_i / n) (1 + s_i)^-a Δ_i    (n = Σ_i n_i, the buffer's)

(``fedbuff.server-lr`` eta_g, ``fedbuff.staleness-exponent`` a = 1/2 in the paper)
and its version goes up by one: one row of the history, and one of
``num-server-rounds``. With every s_i = 0 and eta_g = 1 that is FedAvg's step, and
that is how it is computed: each Δ_i scaled by eta_g (1 + s_i)^-a, then the base's
FedAvg (``super().aggregate``). The paper averages the buffer uniformly (1/K);
weighting by n_i, as FedAvg does, is the same on equal shards
(``fl_app.heterogeneity.buffered_update`` states both as pure NumPy).

Flower's server loop is synchronous, so FedBuff drives its updates itself over the
ServerApp's Grid (``strategies.async_rounds``): who trains when comes from the
virtual clock in the simulation (reproducible from the seed), from the real replies
in a deployment.

Refused, with the reason: SecAgg+ (it masks a synchronous cohort's sum), DP (the
accountant composes synchronous uniform samples), compression in the simulation
(the schedule prices an upload before it is made), resume (clients in flight train
from models the checkpoint does not hold), round deadlines, over-commitment and
selection policies (ideas of synchronous rounds), online hours (not modelled in its
schedule).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from flwr.common import NDArrays

from fl_app.config import ConfigError, RunConfig
from fl_app.heterogeneity import staleness_weight
from strategies.base import BaseStrategy
from strategies.validation import ClientUpdate


class FedBuff(BaseStrategy):
    """Buffered asynchronous FedAvg; run by ``strategies.async_rounds.run_buffered``."""

    asynchronous = True

    dp_conflict = (
        "FedBuff aggregates replies as they arrive; the DP accountant composes "
        "synchronous rounds of uniformly sampled clients"
    )
    secagg_conflict = (
        "SecAgg+ masks the sum of a synchronous cohort; FedBuff aggregates replies "
        "as they arrive"
    )

    def __init__(self, config: RunConfig, run_dir: Any = None, **kwargs: Any) -> None:
        super().__init__(config, run_dir, **kwargs)
        #: How stale each reply of the buffer being aggregated is, by its client
        #: object (set by the loop before ``aggregate``).
        self.staleness: dict[int, int] = {}

    @classmethod
    def check_config(cls, config: RunConfig) -> None:
        super().check_config(config)
        heterogeneity = config.heterogeneity
        synchronous = {
            "heterogeneity.round-deadline": heterogeneity.round_deadline > 0,
            "heterogeneity.over-commit": heterogeneity.over_commit > 1,
            "selection.policy": config.selection.policy != "uniform",
            "heterogeneity.partial-work": heterogeneity.partial_work,
        }
        for key, used in synchronous.items():
            if used:
                raise ConfigError(
                    key,
                    "belongs to synchronous rounds; FedBuff has none (it waits for "
                    "no cohort): leave it at its default with strategy = 'fedbuff'",
                )
        if heterogeneity.online_fraction < 1:
            raise ConfigError(
                "heterogeneity.online-fraction",
                "FedBuff's schedule does not model online hours: every device is "
                "online; use 1.0 with strategy = 'fedbuff'",
            )
        if config.compression.enabled and config.partition_source == "server":
            raise ConfigError(
                "compression.scheme",
                "FedBuff's simulated schedule prices each upload before it is made, "
                "at the model's size: use 'none' with strategy = 'fedbuff'",
            )
        if config.resume:
            raise ConfigError(
                "resume",
                "FedBuff's clients in flight train from models the checkpoint does "
                "not hold; start the run again",
            )
        if config.fraction_evaluate > 0:
            raise ConfigError(
                "fraction-evaluate",
                "FedBuff has no synchronous rounds to evaluate on clients; the "
                "server evaluates every update centrally: use 0",
            )

    def aggregate(
        self, server_round: int, updates: list[ClientUpdate]
    ) -> NDArrays | None:
        """FedAvg of the buffer's updates, each scaled by eta_g (1 + s)^-a. An update
        the loop did not date (the strategy driven round by round, by hand or by
        Flower's synchronous loop) is fresh: s = 0."""
        settings = self.config.fedbuff
        scaled = []
        for update in updates:
            weight = settings.server_lr * staleness_weight(
                self.staleness.get(id(update.client), 0), settings.staleness_exponent
            )
            delta = [d * weight for d in update.delta]
            scaled.append(dataclasses.replace(update, delta=delta))
        return super().aggregate(server_round, scaled)
