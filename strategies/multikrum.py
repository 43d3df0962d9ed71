"""Multi-Krum: Blanchard et al., NeurIPS 2017, section 4 ("Multi-Krum").

Krum's scores as in ``strategies.krum``; the m replies with the lowest scores are
averaged (weighted by n_k, as Flower's ``aggregate`` does). The paper's choice,
m = n - f, is taken each round from the number of valid replies n unless
``krum.num-to-keep`` fixes m.
"""

from __future__ import annotations

from flwr.common import NDArrays

from strategies.base import ClientUpdate
from strategies.krum import Krum


class MultiKrum(Krum):
    """Average of the n - f best-scored replies (or ``krum.num-to-keep`` of them)."""

    def aggregate(
        self, server_round: int, updates: list[ClientUpdate]
    ) -> NDArrays | None:
        """Krum's rule with m set from this round's valid replies, n - f."""
        fixed = self.config.krum.num_to_keep
        self.num_clients_to_keep = fixed or max(
            1, len(updates) - self.config.krum.num_malicious
        )
        return super().aggregate(server_round, updates)
