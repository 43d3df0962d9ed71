"""The server's side of SecAgg+: what it refuses to combine with, and the check that
every reply carries the one aggregate the masked sum gives.

Under SecAgg+ (``secagg.enabled``) the server never sees a client's update, only
their weighted average, which Flower's ``SecAggPlusWorkflow`` puts in every reply.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from logging import WARNING

import numpy as np
from flwr.common import (
    FitRes,
    log,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.server.client_proxy import ClientProxy

from fl_app.config import ConfigError, RunConfig
from fl_app.results import RoundRecord


def check_secagg(config: RunConfig, conflict: str | None) -> None:
    """Refuse, naming the key, what needs more than the sum SecAgg+ shows the server
    (``conflict``: why the strategy itself cannot, None if it averages)."""
    if conflict is not None:
        raise ConfigError(
            "secagg.enabled",
            f"SecAgg+ cannot be used with strategy {config.strategy!r}: {conflict}",
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


def only_the_aggregate(
    results: list[tuple[ClientProxy, FitRes]],
    dtypes: Sequence[np.dtype],
    record: RoundRecord,
) -> list[tuple[ClientProxy, FitRes]]:
    """Every reply carries the same parameters, the average the masked sum gives:
    check it (``record`` counts the distinct updates that arrived), and cast it from
    SecAgg+'s float64 to the model's ``dtypes``. Empty: refused."""
    distinct = {tuple(res.parameters.tensors) for _, res in results}
    record.extra["distinct_updates_seen"] = len(distinct)
    if len(distinct) > 1:
        log(
            WARNING,
            "round %s: SecAgg+ is on, yet %s different updates arrived; "
            "the model stays unchanged",
            record.round,
            len(distinct),
        )
        return []
    if not results:
        return results
    arrays = parameters_to_ndarrays(results[0][1].parameters)
    if len(arrays) == len(dtypes):
        arrays = [a.astype(d) for a, d in zip(arrays, dtypes, strict=True)]
    parameters = ndarrays_to_parameters(arrays)
    return [(proxy, replace(res, parameters=parameters)) for proxy, res in results]
