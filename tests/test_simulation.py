"""The real app through Flower's simulation: ``flwr run`` against a SuperLink.

No stand-in loop: a SuperLink in simulation mode, ``flwr run`` with 10 virtual
SuperNodes, the ServerApp and ClientApps as Flower and Ray start them. Checked from
what the run leaves behind (status from ``flwr list``, files on disk), because
``flwr run --stream`` exits 0 even when a run fails.

Each run costs 15-20 s of Flower's and Ray's start-up, so each checks several things:
one run per client-side algorithm (FedProx with top-k compression, an attack,
SecAgg+ with dropouts and central DP; SCAFFOLD and the crash in ``test_resume.py``).
Two of them are also run in process (``tests/inprocess.py``) and must give the same
history: that is what lets ``test_app_in_process.py`` stand in for ``flwr run``.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import pytest

from fl_app.launch.flower_cli import (
    FlowerHome,
    flwr_run,
    run_status,
    simulation_config,
)
from fl_app.launch.processes import ManagedProcess
from fl_app.privacy import gaussian_epsilon
from fl_app.results import MACHINE_FIELDS, read_history
from tests.inprocess import APP_DIR, quick_config, run_in_process

pytestmark = pytest.mark.integration

NUM_NODES = 10
SuperLink = tuple[FlowerHome, ManagedProcess]


def run_config(data_dir: Path, output_dir: Path, **overrides: Any) -> dict[str, Any]:
    """2 rounds, 5 of 10 clients a round (``tests/inprocess.quick_config``)."""
    return quick_config(data_dir, output_dir, 2, **overrides)


def simulate(
    superlink: SuperLink, config: dict[str, Any], log_dir: Path
) -> tuple[dict[str, Any], Path]:
    """``flwr run`` of ``config`` with 10 virtual clients; (status, run folder)."""
    home, _ = superlink
    run_id = flwr_run(
        APP_DIR,
        "sim",
        home,
        config,
        log_path=log_dir / "flwr-run.log",
        federation_config=simulation_config(NUM_NODES, cpus_per_client=1),
        timeout=600,
    )
    status = run_status("sim", home, run_id)
    output_dir = Path(config["output-dir"])
    runs = [p for p in output_dir.iterdir() if p.is_dir() and p.name != "latest"]
    assert len(runs) == 1, f"expected one run folder in {output_dir}: {runs}"
    return status, runs[0]


def completed(status: dict[str, Any], run_dir: Path) -> list[dict[str, Any]]:
    assert status["status"] == "finished:completed", status
    return read_history(run_dir)


def comparable(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """History rows without the fields that measure the machine, not the run."""
    return [
        {k: v for k, v in row.items() if k not in MACHINE_FIELDS} for row in history
    ]


def assert_same_history(got: list[dict], want: list[dict]) -> None:
    """Equal row by row; floats to 1e-6 (the server's own evaluation may run with
    another number of torch threads in another process)."""
    got, want = comparable(got), comparable(want)
    assert [r["round"] for r in got] == [r["round"] for r in want]
    for mine, theirs in zip(got, want, strict=True):
        assert mine.keys() == theirs.keys()
        for key, value in theirs.items():
            if isinstance(value, float) and not math.isnan(value):
                assert mine[key] == pytest.approx(value, abs=1e-6), (mine["round"], key)
            else:
                assert mine[key] == value, (mine["round"], key)


def in_process_history(config: dict[str, Any], output_dir: Path) -> list[dict]:
    """The same config run by ``tests/inprocess.py``, into ``output_dir``."""
    run_in_process({**config, "output-dir": str(output_dir)}, NUM_NODES)
    return read_history((output_dir / "latest").resolve())


def test_fedprox_with_local_dp_and_topk_compression(
    superlink: SuperLink, mnist_dir: Path, tmp_path: Path
) -> None:
    """FedProx's proximal term, local DP and top-k with error feedback, all client
    parts switched on by the run config: every reply decodes (none rejected), the
    model learns, the upload (measured from the replies) is >= 20x smaller than the
    download, each row's epsilon is the worst client's (its participations so far
    composed), and the run equals the in-process run of the same config (the local
    noise is seeded)."""
    z, delta = 0.01, 1e-5
    config = run_config(
        mnist_dir,
        tmp_path / "out",
        strategy="fedprox",
        **{
            "fedprox.mu": 0.1,
            "compression.scheme": "topk",
            "compression.topk-fraction": 0.01,
            "dp.mode": "local",
            "dp.clip-norm": 1.0,
            "dp.noise-multiplier": z,
            "dp.delta": delta,
            "dp.noise-seed": 7,
        },
    )
    history = completed(*simulate(superlink, config, tmp_path))
    assert history[-1]["test_accuracy"] > history[0]["test_accuracy"] + 0.1, history
    for row in history[1:]:
        assert row["clients_succeeded"] == 5 and row["clients_rejected"] == 0
        assert row["bytes_received"] * 20 <= row["bytes_sent"]
    # Rounds of 5 of 10 clients: after round 1 every sampled client has one
    # release; after round 2 the worst has one or two.
    assert history[0]["epsilon"] == 0.0
    assert history[1]["epsilon"] == pytest.approx(gaussian_epsilon(z, 1, delta))
    assert history[2]["epsilon"] in (
        pytest.approx(gaussian_epsilon(z, count, delta)) for count in (1, 2)
    )
    assert_same_history(history, in_process_history(config, tmp_path / "local"))


def test_attackers_are_rejected_and_the_run_goes_on(
    superlink: SuperLink, mnist_dir: Path, tmp_path: Path
) -> None:
    """Gaussian-noise attackers (drawn from the seed, which the server is never
    told) break the update-norm bound: each one sampled is rejected with reason
    'norm', the rest are aggregated, the run completes as the in-process one."""
    seed = 3
    config = run_config(
        mnist_dir,
        tmp_path / "out",
        seed=seed,
        **{
            "attack.kind": "gaussian-noise",
            "attack.sigma": 50.0,
            "attack.fraction": 0.2,
        },
    )
    history = completed(*simulate(superlink, config, tmp_path))
    rejected = [row["rejected_norm"] for row in history[1:]]
    assert rejected == [row["attackers_sampled"] for row in history[1:]]
    assert rejected == [row["clients_rejected"] for row in history[1:]]
    assert sum(rejected) > 0, "no round sampled an attacker: pick another seed"
    assert history[-1]["test_accuracy"] > history[0]["test_accuracy"] + 0.1
    assert_same_history(history, in_process_history(config, tmp_path / "local"))


def test_secagg_survives_dropouts_and_spends_epsilon_under_central_dp(
    superlink: SuperLink, mnist_dir: Path, tmp_path: Path
) -> None:
    """SecAgg+ with central DP, and 20% of the clients training then never
    replying (they drop in SecAgg+'s third stage, after their key shares went
    out). The survivors' shares rebuild the dropped clients' masks: every round
    updates the model from the survivors' sum alone, which is all the strategy
    sees; the clients clip (the server cannot see their updates), the server adds
    the noise to the aggregate and spends epsilon."""
    config = run_config(
        mnist_dir,
        tmp_path / "out",
        seed=4,
        **{
            "secagg.enabled": True,
            "secagg.num-shares": 5,
            "secagg.reconstruction-threshold": 3,
            "validation.max-update-norm": 0.0,
            "attack.kind": "dropout",
            "attack.fraction": 0.2,  # 1 drops in each round: 4 survivors >= 3
            "dp.clip-norm": 1.0,
            "dp.noise-multiplier": 0.5,
            "dp.noise-seed": 1,
        },
    )
    history = completed(*simulate(superlink, config, tmp_path))
    assert any(row["attackers_sampled"] > 0 for row in history[1:]), (
        "no round sampled a client that drops: pick another seed"
    )
    for row in history[1:]:
        assert row["clients_failed"] == row["attackers_sampled"]
        assert row["clients_succeeded"] == 5 - row["attackers_sampled"]
        assert row["model_updated"] is True
        assert row["distinct_updates_seen"] == 1
    epsilons = [row["epsilon"] for row in history]
    assert epsilons[0] == 0.0
    assert all(a < b for a, b in itertools.pairwise(epsilons))
    # Learning is not asked here: noise of std z*S/m on each of 200k coordinates
    # outweighs three clipped updates of norm <= S.
    assert all(math.isfinite(row["test_loss"]) for row in history)


def test_power_of_choice_under_a_deadline_with_over_commitment(
    superlink: SuperLink, mnist_dir: Path, tmp_path: Path
) -> None:
    """Simulated devices, Power-of-Choice, ceil(1.6·5) = 8 clients a round and a
    deadline: through Flower's simulation each round keeps at most 5 on-time
    replies, drops the rest as late, advances the virtual clock, and equals the
    in-process run of the same config (whose choices and times
    tests/test_selection.py and tests/test_virtual_clock.py recompute)."""
    config = run_config(
        mnist_dir,
        tmp_path / "out",
        **{
            "selection.policy": "power-of-choice",
            "heterogeneity.enabled": True,
            "heterogeneity.over-commit": 1.6,
            "heterogeneity.round-deadline": 2.5,
        },
    )
    history = completed(*simulate(superlink, config, tmp_path))
    times = [row["virtual_time_s"] for row in history]
    assert times[0] == 0.0 and all(a < b for a, b in itertools.pairwise(times))
    for row in history[1:]:
        assert row["clients_sampled"] == 8 and row["clients_succeeded"] == 8
        assert row["clients_late"] >= 3
        assert row["clients_late"] + row["clients_rejected"] <= 8
    assert_same_history(history, in_process_history(config, tmp_path / "local"))


def test_fedbuff_runs_asynchronously_through_the_simulation(
    superlink: SuperLink, mnist_dir: Path, tmp_path: Path
) -> None:
    """FedBuff's own loop over the simulation's grid: 5 clients in flight, an update
    every 3 replies, stale replies weighted down; its history is the virtual
    schedule's, so it equals the in-process run's (tests/test_fedbuff.py
    recomputes that one from the seed)."""
    config = run_config(
        mnist_dir,
        tmp_path / "out",
        strategy="fedbuff",
        **{
            "num-server-rounds": 4,
            "heterogeneity.enabled": True,
            "fedbuff.buffer-size": 3,
            "fedbuff.concurrency": 5,
        },
    )
    history = completed(*simulate(superlink, config, tmp_path))
    assert [row["round"] for row in history] == [0, 1, 2, 3, 4]
    assert any(row["staleness_max"] > 0 for row in history[1:])
    assert history[-1]["test_accuracy"] > history[0]["test_accuracy"] + 0.1
    assert_same_history(history, in_process_history(config, tmp_path / "local"))
