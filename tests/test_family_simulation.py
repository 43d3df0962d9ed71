"""Every strategy through ``flwr run`` in Flower's simulation, and the behaviours
that only a real run shows: SCAFFOLD's client variates surviving in the nodes'
``Context.state`` across rounds, misbehaving clients rejected without ending the run,
and central DP stopping cleanly at its budget.

Runs share the session's SuperLink (``tests/conftest.py``); each is 2-4 rounds with
10 virtual clients on the small synthetic dataset.
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from fl_app.attacks import attacking_partitions
from fl_app.results import SUMMARY_FILE, read_history
from fl_app.runner import FlowerHome, ManagedProcess
from strategies import STRATEGIES
from tests.test_simulation import simulate

pytestmark = pytest.mark.integration

SuperLink = tuple[FlowerHome, ManagedProcess]
NUM_NODES = 10


def completed(status: dict[str, Any], run_dir: Path) -> list[dict[str, Any]]:
    assert status["status"] == "finished:completed", status
    return read_history(run_dir)


@pytest.mark.parametrize("strategy", sorted(set(STRATEGIES) - {"fedavg", "scaffold"}))
def test_strategy_runs_through_flower_and_learns(
    superlink: SuperLink, mnist_dir: Path, tmp_path: Path, strategy: str
) -> None:
    """fedavg runs in test_simulation.py and scaffold below."""
    status, run_dir = simulate(
        superlink,
        mnist_dir,
        tmp_path,
        strategy=strategy,
        num_server_rounds=2,
        fraction_evaluate=0.0,
        **{"fedopt.eta": 0.03},
    )
    history = completed(status, run_dir)
    assert [row["round"] for row in history] == [0, 1, 2]
    assert history[-1]["test_accuracy"] > history[0]["test_accuracy"] + 0.1, history
    for row in history[1:]:
        assert row["clients_succeeded"] == 5 and row["clients_rejected"] == 0
        assert row["model_updated"] is True
    assert json.loads((run_dir / "config.json").read_text())["strategy"] == strategy


def test_scaffold_client_variates_persist_across_rounds(
    superlink: SuperLink, mnist_dir: Path, tmp_path: Path
) -> None:
    """A client sampled again finds its c_i in its Context.state: the number of such
    returning clients per round is what the seeded sample implies."""
    rounds, seed = 4, 11
    status, run_dir = simulate(
        superlink,
        mnist_dir,
        tmp_path,
        strategy="scaffold",
        num_server_rounds=rounds,
        fraction_evaluate=0.0,
        seed=seed,
    )
    history = completed(status, run_dir)
    assert history[-1]["test_accuracy"] > history[0]["test_accuracy"] + 0.1
    seen: set[int] = set()
    expected = []
    for server_round in range(1, rounds + 1):
        rng = np.random.default_rng([seed, server_round, 0])
        sample = set(rng.choice(NUM_NODES, size=5, replace=False).tolist())
        expected.append(len(sample & seen))
        seen |= sample
    assert expected[1:] != [0] * (rounds - 1)  # the check is not vacuous
    got = [row["scaffold_returning"] for row in history[1:]]
    assert got == expected


def test_misbehaving_clients_are_rejected_and_the_run_goes_on(
    superlink: SuperLink, mnist_dir: Path, tmp_path: Path
) -> None:
    """Gaussian-noise attackers with a huge sigma break the update-norm bound: every
    one sampled is rejected with reason 'norm', the rest are aggregated."""
    seed = 3
    status, run_dir = simulate(
        superlink,
        mnist_dir,
        tmp_path,
        num_server_rounds=3,
        fraction_evaluate=0.0,
        seed=seed,
        **{
            "attack.kind": "gaussian-noise",
            "attack.sigma": 50.0,
            "attack.fraction": 0.2,  # <= 2 of 5 drop: 3 survivors, the threshold
        },
    )
    history = completed(status, run_dir)
    attackers = attacking_partitions(seed, NUM_NODES, 0.3)
    assert len(attackers) == 3
    rejected = 0
    for row in history[1:]:
        assert (
            row["clients_rejected"] == row["rejected_norm"] == row["attackers_sampled"]
        )
        rejected += row["rejected_norm"]
        assert math.isfinite(row["test_loss"])
    assert rejected > 0
    assert history[-1]["test_accuracy"] > history[0]["test_accuracy"] + 0.1


def test_central_dp_spends_epsilon_and_stops_at_its_budget(
    superlink: SuperLink, mnist_dir: Path, tmp_path: Path
) -> None:
    """FedAdam wrapped in central DP: epsilon grows each round; a budget between
    rounds 2 and 3 ends the run cleanly after round 2, with the reason on disk."""
    status, run_dir = simulate(
        superlink,
        mnist_dir,
        tmp_path,
        strategy="fedadam",
        num_server_rounds=4,
        fraction_evaluate=0.0,
        **{
            "dp.clip-norm": 1.0,
            "dp.noise-multiplier": 4.0,
            "dp.max-epsilon": 2.8,
        },
    )
    history = completed(status, run_dir)
    epsilons = [row["epsilon"] for row in history]
    assert epsilons[0] == 0.0
    assert all(a < b for a, b in itertools.pairwise(epsilons))
    # K = 10 clients, m = 5 a round, z = 4: epsilon is 1.67, 2.44, 3.11 after rounds
    # 1-3 (dp-accounting at delta 1e-5), so a budget of 2.8 allows two rounds.
    assert [row["round"] for row in history] == [0, 1, 2]
    assert epsilons[-1] == pytest.approx(2.437, abs=0.01)
    summary = json.loads((run_dir / SUMMARY_FILE).read_text())
    assert "dp.max-epsilon" in summary["stop_reason"]
    assert summary["rounds_done"] == history[-1]["round"]


@pytest.mark.parametrize("scheme", ["topk"])
def test_compressed_updates_go_through_flower(
    superlink: SuperLink, mnist_dir: Path, tmp_path: Path, scheme: str
) -> None:
    """topk with error feedback: every reply decodes (none rejected), the model
    learns, and the upload bytes (measured from the replies) are >= 20x fewer than
    the download of the same clients' float32 weights."""
    status, run_dir = simulate(
        superlink,
        mnist_dir,
        tmp_path,
        num_server_rounds=3,
        fraction_evaluate=0.0,
        **{"compression.scheme": scheme, "compression.topk-fraction": 0.01},
    )
    history = completed(status, run_dir)
    assert history[-1]["test_accuracy"] > history[0]["test_accuracy"] + 0.1, history
    for row in history[1:]:
        assert row["clients_succeeded"] == 5 and row["rejected_codec"] == 0
        assert row["bytes_received"] * 20 <= row["bytes_sent"]


def test_secagg_aggregate_matches_plain_fedavg(
    superlink: SuperLink, mnist_dir: Path, tmp_path: Path
) -> None:
    """One round with SecAgg+ and one without, same seed: the strategy saw only the
    aggregate (one distinct update), and the new global model equals plain FedAvg's
    within SecAgg+'s quantization error: a step of 2c/Q on each client's update,
    scaled by n_k / max-weight, so at most step * max-weight / min n_k."""
    common = {"num_server_rounds": 1, "fraction_evaluate": 0.0, "seed": 5}
    status, plain_dir = simulate(superlink, mnist_dir, tmp_path / "plain", **common)
    completed(status, plain_dir)
    secure = {
        "secagg.enabled": True,
        "validation.max-update-norm": 0.0,
        "secagg.max-weight": 200.0,
    }
    status, secure_dir = simulate(
        superlink, mnist_dir, tmp_path / "secure", **common, **secure
    )
    history = completed(status, secure_dir)
    assert [row["distinct_updates_seen"] for row in history[1:]] == [1]
    assert history[1]["clients_succeeded"] == 5

    plain = torch.load(plain_dir / "model.pt", weights_only=True)
    masked = torch.load(secure_dir / "model.pt", weights_only=True)
    step = 2 * 8.0 / 4194304
    bound = step * 200.0 / 150  # n_k >= 150 here (2,000 examples over 10 clients)
    worst = max(float((plain[k] - masked[k]).abs().max()) for k in plain)
    assert 0 < worst <= bound, worst


def test_secagg_survives_clients_that_drop_after_sharing_their_masks(
    superlink: SuperLink, mnist_dir: Path, tmp_path: Path
) -> None:
    """attack.kind = dropout: 20% of the clients train and then never reply, i.e.
    they drop in SecAgg+'s third stage, after the key shares went out. The
    survivors' shares rebuild the dropped clients' masks: every round with a
    dropout still updates the model from the survivors' sum alone."""
    status, run_dir = simulate(
        superlink,
        mnist_dir,
        tmp_path,
        num_server_rounds=3,
        fraction_evaluate=0.0,
        seed=4,
        **{
            "secagg.enabled": True,
            "secagg.num-shares": 5,
            "secagg.reconstruction-threshold": 3,
            "validation.max-update-norm": 0.0,
            "attack.kind": "dropout",
            "attack.fraction": 0.2,  # <= 2 of 5 drop: 3 survivors, the threshold
        },
    )
    history = completed(status, run_dir)
    dropped = [row for row in history[1:] if row["attackers_sampled"] > 0]
    assert dropped, "no round sampled a client that drops: pick another seed"
    for row in history[1:]:
        assert row["clients_failed"] == row["attackers_sampled"]
        assert row["clients_succeeded"] == 5 - row["attackers_sampled"]
        assert row["model_updated"] is True
        assert row["distinct_updates_seen"] == 1
    assert history[-1]["test_accuracy"] > history[0]["test_accuracy"] + 0.1


def test_secagg_with_central_dp_clips_on_the_clients_and_spends_epsilon(
    superlink: SuperLink, mnist_dir: Path, tmp_path: Path
) -> None:
    """Central DP under SecAgg+: the clients clip (the server cannot see their
    updates), the server adds the noise to the aggregate and accounts for it."""
    status, run_dir = simulate(
        superlink,
        mnist_dir,
        tmp_path,
        num_server_rounds=2,
        fraction_evaluate=0.0,
        **{
            "secagg.enabled": True,
            "validation.max-update-norm": 0.0,
            "dp.clip-norm": 1.0,
            "dp.noise-multiplier": 0.5,
            "dp.noise-seed": 1,
        },
    )
    history = completed(status, run_dir)
    assert [row["distinct_updates_seen"] for row in history[1:]] == [1, 1]
    assert all(row["model_updated"] for row in history[1:])
    assert 0 < history[1]["epsilon"] < history[2]["epsilon"]
