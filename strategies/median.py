"""Coordinate-wise median: Yin, Chen, Ramchandran & Bartlett, "Byzantine-Robust
Distributed Learning: Towards Optimal Statistical Rates", ICML 2018.

    w_{t+1}[j] = median_k w_k[j]   for every coordinate j.

The median of w_t + Δ_k is w_t + median(Δ_k), so the rule acts on the updates.
It ignores n_k. The rule is Flower's ``FedMedian``.
"""

from __future__ import annotations

from flwr.server.strategy import FedMedian as FlowerFedMedian

from strategies.base import BaseStrategy


class Median(BaseStrategy, FlowerFedMedian):
    """Per-coordinate median of the replies."""

    dp_conflict = (
        "the median's sensitivity to one client is not S/m, so noise calibrated to "
        "the mean would not give the epsilon the accountant reports"
    )
    secagg_conflict = (
        "a robust rule needs each client's update, and SecAgg+ shows the server "
        "only their sum"
    )
