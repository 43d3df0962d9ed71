"""Coordinate-wise trimmed mean: Yin, Chen, Ramchandran & Bartlett, ICML 2018.

For every coordinate j, sort the n values w_k[j], drop the floor(beta n) largest and
the floor(beta n) smallest, and average the rest (unweighted). beta is
``trimmed-mean.beta`` (< 0.5). The rule is Flower's ``FedTrimmedAvg``.
"""

from __future__ import annotations

from pathlib import Path

from flwr.server.strategy import FedTrimmedAvg as FlowerFedTrimmedAvg

from fl_app.config import RunConfig
from strategies.base import BaseStrategy


class TrimmedMean(BaseStrategy, FlowerFedTrimmedAvg):
    """Per-coordinate mean without the beta share at each end."""

    dp_conflict = (
        "trimming depends on the other clients' values, so noise calibrated to the "
        "plain mean would not give the epsilon the accountant reports"
    )
    secagg_conflict = (
        "a robust rule needs each client's update, and SecAgg+ shows the server "
        "only their sum"
    )

    def __init__(self, config: RunConfig, run_dir: Path | None = None) -> None:
        super().__init__(config, run_dir, beta=config.trimmed_mean.beta)
