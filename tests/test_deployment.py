"""End-to-end on a real Flower deployment: TLS, SuperNode authentication, failures.

One federation (SuperLink + 3 SuperNodes on loopback, started by
fl_app/launch/federation.py from certificates made by scripts/make_certs.py) serves
the whole module: starting it costs ~10 s and a deployed round 10-30 s on a 2-core
machine (every message starts a fresh ``flwr-clientapp`` process, and an idle
SuperNode polls every 3 s). So the module runs as few rounds as its checks need:
the uninterrupted run a crash and resume must equal is run in process
(``tests/inprocess.py``), and the resumed run is also the check of client state
across rounds.
Tests run in file order; the last one kills a SuperNode.

What Flower 1.42 does when a SuperNode dies mid-round: the SuperLink answers the
message in flight with a "Node Unavailable" error only once the node has missed its
heartbeats (2 x 30 s after the last one, so 35-60 s after the crash); with a
``round-timeout`` the message expires after that many seconds instead and the round
goes on with the replies it has. The kill test sets ``round-timeout`` so that it does
not wait a minute for the heartbeat verdict.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from fl_app.launch.certs import Certs
from fl_app.launch.federation import Federation
from fl_app.launch.runs import RunOutcome
from fl_app.privacy import gaussian_epsilon
from fl_app.results import (
    HISTORY_CSV,
    HISTORY_JSON,
    MODEL_FILE,
    PLOT_FILE,
    read_history,
)
from tests.inprocess import run_in_process
from tests.synthetic import write_mnist_like

# One worker runs the whole module, in file order, beside the rest of the suite
# (``pytest -n 3 --dist loadgroup``): its rounds mostly wait on Flower's polls.
pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("deployment")]

REPO = Path(__file__).resolve().parent.parent
NUM_NODES = 3
UNREGISTERED_KEY = NUM_NODES  # key index made but never registered
NO_CA_KEY = NUM_NODES + 1  # key index registered, used by a node that lacks ca.crt
# Long enough for a healthy node's reply on a busy 2-core machine (~10-13 s
# measured, and the ServerApp polls every 3 s), short enough that the kill test does
# not wait for the heartbeat verdict.
ROUND_TIMEOUT = 25.0


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("deployment")


@pytest.fixture(scope="module")
def certs(workdir: Path) -> Certs:
    """CA, SuperLink certificate and node keys, by the script operators use."""
    directory = workdir / "certs"
    subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "make_certs.py"),
            "--out-dir",
            str(directory),
            "--num-supernodes",
            str(NUM_NODES + 2),
        ],
        check=True,
        capture_output=True,
    )
    return Certs(directory)


@pytest.fixture(scope="module")
def data_dir(workdir: Path) -> Path:
    return write_mnist_like(workdir / "data")


@pytest.fixture(scope="module")
def federation(workdir: Path, certs: Certs) -> Iterator[Federation]:
    """SuperLink + NUM_NODES registered SuperNodes, all online; stopped afterwards."""
    fed = Federation(
        certs, workdir / "federation", env={"FL_APP_CACHE": str(workdir / "cache")}
    )
    try:
        fed.start_superlink()
        fed.start_supernodes(NUM_NODES)
        fed.wait_for_online(NUM_NODES, timeout=60)
        yield fed
    finally:
        fed.stop()
        started = [fed.superlink, *fed.supernodes.values()]
        assert not [p.name for p in started if p is not None and p.alive()]


def run_config(data_dir: Path, output_dir: Path, **overrides: Any) -> dict[str, Any]:
    """Two quick rounds on every node; ``overrides`` use Python names (a_b = a-b)."""
    config: dict[str, Any] = {
        "num-server-rounds": 2,
        "fraction-fit": 1.0,
        "min-fit-clients": 2,
        "min-available-clients": NUM_NODES,
        "min-available-timeout": 30.0,  # a missing node fails the run, not hangs it
        "dataset": "mnist",
        "data-dir": str(data_dir),
        "output-dir": str(output_dir),
        "tracking.tensorboard": False,  # test_tracking.py and test_resume.py do
    }
    config.update({key.replace("_", "-"): value for key, value in overrides.items()})
    return config


def run_in_background(
    federation: Federation, config: dict[str, Any]
) -> tuple[threading.Thread, dict[str, Any]]:
    """``federation.run`` in a thread: the test can act meanwhile and bound the wait.

    The outcome dict gets ``result`` or ``error``; a run still going when the test
    gives up ends with the federation, which the fixture stops.
    """
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = federation.run(config)
        except Exception as error:  # reported by the caller's assertion
            outcome["error"] = error

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def finish(
    thread: threading.Thread, outcome: dict[str, Any], timeout: float
) -> RunOutcome:
    thread.join(timeout)
    assert not thread.is_alive(), f"run still going after {timeout:g}s"
    assert "result" in outcome, outcome
    return outcome["result"]


def explain(result: RunOutcome) -> str:
    log = result.log_path.read_text(errors="replace").splitlines()
    return f"{result.status} {result.details}\n" + "\n".join(log[-30:])


def test_scaffold_state_persists_and_a_crashed_superlink_comes_back(
    federation: Federation, data_dir: Path, tmp_path: Path
) -> None:
    """SCAFFOLD over TLS, 2 rounds; mid-round 2 the SuperLink crashes (SIGKILL,
    with its SuperExec and ServerApp) and is started again on its database: the
    SuperNodes, never restarted, reconnect by themselves, and the run resumed
    (``resume = true``) gives rounds 0-2 equal to the uninterrupted run's to 1e-6
    (run in process: ``tests/inprocess.py``); each SuperNode keeps its control
    variate c_i between rounds, across the crash too (every node trains every
    round, so in round 2 all of them find the c_i they stored)."""
    whole = run_config(data_dir, tmp_path / "whole", num_server_rounds=2)
    whole["strategy"] = "scaffold"
    run_in_process(whole, NUM_NODES)
    want = read_history((tmp_path / "whole" / "latest").resolve())
    returning = [0, NUM_NODES]
    assert [row["scaffold_returning"] for row in want[1:]] == returning

    crash_dir = tmp_path / "crash"
    thread, outcome = run_in_background(
        federation, {**whole, "output-dir": str(crash_dir)}
    )
    deadline = time.monotonic() + 120
    while not _rounds_done(crash_dir) >= 1:
        assert thread.is_alive() and time.monotonic() < deadline, outcome
        time.sleep(0.1)
    assert federation.superlink is not None
    serverapps = _processes(
        psutil.Process(federation.superlink.pid),
        lambda command: "flwr-serverapp" in " ".join(command),
    )
    assert serverapps, "no flwr-serverapp process"
    nodes = {name: node.pid for name, node in federation.supernodes.items()}
    federation.crash_superlink()  # mid-round 2, with its ServerApp
    # The CLI would stream until it gives up; it goes too.
    for process in _processes(psutil.Process(), _is_flwr_run):
        process.kill()
    thread.join(60)
    crash_run = (crash_dir / "latest").resolve()
    assert [row["round"] for row in read_history(crash_run)] == [0, 1]
    _, alive = psutil.wait_procs(serverapps, timeout=10)
    assert not alive, alive  # the ServerApp went down with its host
    # Back on its database: the nodes reconnect by themselves, none restarted.
    federation.restart_superlink()
    federation.wait_for_online(NUM_NODES, timeout=120)
    for name, pid in nodes.items():
        node = federation.supernodes[name]
        assert node.pid == pid and node.alive(), name

    resumed = {**whole, "output-dir": str(crash_dir), "resume": True}
    resumed["resume-dir"] = str(crash_run)
    result = finish(*run_in_background(federation, resumed), 200)
    assert result.completed, explain(result)
    assert result.run_dir == crash_run  # the same folder as a simulation's outcome
    for name in (HISTORY_JSON, HISTORY_CSV, MODEL_FILE, PLOT_FILE):
        assert (crash_run / name).is_file(), name
    got = read_history(crash_run)
    assert [row["round"] for row in got] == [0, 1, 2]
    assert got[2]["test_accuracy"] > got[0]["test_accuracy"]
    assert [row["clients_succeeded"] for row in got[1:]] == [NUM_NODES] * 2
    for mine, theirs in zip(got, want, strict=True):
        for key in ("test_loss", "test_accuracy", "train_loss"):
            if theirs[key] is not None:
                assert mine[key] == pytest.approx(theirs[key], abs=1e-6), key
    assert [row["scaffold_returning"] for row in got[1:]] == returning


def _processes(
    root: psutil.Process, wanted: Callable[[list[str]], bool]
) -> list[psutil.Process]:
    """Live descendants of ``root`` whose command line is ``wanted``."""
    found = []
    for process in root.children(recursive=True):
        try:
            if wanted(process.cmdline()):
                found.append(process)
        except psutil.Error:  # gone, or a zombie
            pass
    return found


def _is_flwr_run(command: list[str]) -> bool:
    return any(Path(a).name == "flwr" for a in command[:2]) and "run" in command


def _rounds_done(output_dir: Path) -> int:
    try:
        return len(read_history((output_dir / "latest").resolve())) - 1
    except (OSError, ValueError):
        return 0


def test_secagg_with_local_dp_completes_over_tls(
    federation: Federation, data_dir: Path, tmp_path: Path
) -> None:
    """SecAgg+ with local DP (distributed DP) over TLS with node authentication: a
    round goes through the four stages on every node, each stage's ClientApp a
    fresh process that finds the protocol's secrets in the node's state; each node
    clips and noises its update before masking it, the strategy sees only the sum,
    and the history carries the clients' epsilon."""
    z, delta = 0.01, 1e-5
    config = run_config(
        data_dir,
        tmp_path,
        num_server_rounds=1,
        **{
            "secagg.enabled": True,
            "secagg.timeout": 60.0,
            "validation.max-update-norm": 0.0,
            "dp.mode": "local",
            "dp.clip-norm": 1.0,
            "dp.noise-multiplier": z,
            "dp.delta": delta,
        },
    )
    result = finish(*run_in_background(federation, config), 240)
    assert result.completed, explain(result)
    assert result.run_dir == (tmp_path / "latest").resolve()
    history = read_history(result.run_dir)
    assert [row["round"] for row in history] == [0, 1]
    assert history[1]["distinct_updates_seen"] == 1
    assert history[1]["clients_succeeded"] == NUM_NODES
    assert history[1]["test_accuracy"] > history[0]["test_accuracy"]
    assert history[1]["epsilon"] == pytest.approx(gaussian_epsilon(z, 1, delta))


def test_fedbuff_aggregates_replies_as_they_land_over_tls(
    federation: Federation, data_dir: Path, tmp_path: Path
) -> None:
    """FedBuff over TLS with node authentication: three rounds' worth of replies
    (3 updates of 3), every node kept training, each reply taken as it lands
    (real arrivals: no virtual clock), the stale ones weighted down."""
    config = run_config(
        data_dir,
        tmp_path,
        strategy="fedbuff",
        num_server_rounds=3,
        **{"fedbuff.buffer-size": 3, "fedbuff.concurrency": NUM_NODES},
    )
    result = finish(*run_in_background(federation, config), 300)
    assert result.completed, explain(result)
    history = read_history(result.run_dir)
    assert [row["round"] for row in history] == [0, 1, 2, 3]
    for row in history[1:]:
        assert row["clients_sampled"] == row["clients_succeeded"] == 3
        assert row["model_updated"] is True
        assert 0 <= row["staleness_mean"] <= row["staleness_max"] <= 3
    assert history[-1]["test_accuracy"] > history[0]["test_accuracy"]


def test_unregistered_or_untrusting_supernode_is_refused(
    federation: Federation, certs: Certs
) -> None:
    unregistered = federation.start_supernode(
        "unregistered",
        f"partition-id=0 num-partitions={NUM_NODES}",
        private_key=certs.supernode_key(UNREGISTERED_KEY),
        root_certificates=certs.ca_cert,
    )
    federation.register(certs.supernode_public_key(NO_CA_KEY))
    without_ca = federation.start_supernode(
        "without-ca",
        f"partition-id=0 num-partitions={NUM_NODES}",
        private_key=certs.supernode_key(NO_CA_KEY),
        root_certificates=None,  # falls back to the system CAs, which lack ours
    )

    for node in (unregistered, without_ca):
        node.popen.wait(timeout=60)
        assert node.popen.returncode != 0, node.tail()
    log = unregistered.log_path.read_text()
    assert "Exit Code: 305" in log and "Failed to activate SuperNode" in log, log
    assert federation.superlink is not None
    superlink_log = federation.superlink.log_path.read_text()
    assert "No SuperNode found with the given public key" in superlink_log
    log = without_ca.log_path.read_text()
    assert "Exit Code: 305" in log and "CERTIFICATE_VERIFY_FAILED" in log, log
    assert federation.online() == NUM_NODES


def test_too_few_supernodes_end_the_run_with_a_clear_message(
    federation: Federation, data_dir: Path, tmp_path: Path
) -> None:
    started = time.monotonic()
    config = run_config(
        data_dir,
        tmp_path,
        min_available_clients=NUM_NODES + 1,
        min_available_timeout=3.0,
    )
    result = finish(*run_in_background(federation, config), 90)

    assert result.status == "finished:failed", explain(result)
    assert "min-available-clients" in result.details
    assert "min-available-clients" in result.log_path.read_text()
    assert time.monotonic() - started < 60


def _workers(federation: Federation, node: str) -> list[psutil.Process]:
    """The warm ClientApp workers of ``node``'s executor."""
    executor = psutil.Process(federation.executors[node].popen.pid)
    return [
        child
        for child in executor.children()
        if "spawn_main" in " ".join(child.cmdline())
        and "resource_tracker" not in " ".join(child.cmdline())
    ]


def _workers_started(federation: Federation, node: str) -> list[str]:
    """The FAB hashes ``node``'s executor started a worker for, in order."""
    log = federation.executors[node].log_path.read_text(errors="replace")
    return re.findall(r"warm executor: worker \d+ for FAB (\w+)", log)


def test_a_killed_worker_costs_one_reply_and_is_replaced(
    federation: Federation, data_dir: Path, tmp_path: Path
) -> None:
    """SIGKILL a node's warm worker while it trains in round 1: the round counts
    that client as failed and aggregates the other two; round 2 gets a fresh
    worker on that node and all three replies."""
    node = "supernode-1"
    log_path = federation.supernodes[node].log_path
    trained_before = log_path.read_text().count("Receiving: train")
    config = run_config(
        data_dir,
        tmp_path,
        num_server_rounds=2,
        round_timeout=ROUND_TIMEOUT,
        local_epochs=20,  # a few seconds of training to kill it in
    )
    thread, outcome = run_in_background(federation, config)
    deadline = time.monotonic() + 120
    while log_path.read_text().count("Receiving: train") == trained_before:
        assert thread.is_alive() and time.monotonic() < deadline, outcome
        time.sleep(0.05)
    killed = _workers(federation, node)
    assert killed, "no warm worker to kill"
    cpu = {w.pid: sum(w.cpu_times()[:2]) for w in killed}
    while all(sum(w.cpu_times()[:2]) < cpu[w.pid] + 0.3 for w in killed):
        assert thread.is_alive() and time.monotonic() < deadline, outcome
        time.sleep(0.02)  # until one of them computes: it holds the message
    for worker in killed:
        worker.kill()
    result = finish(thread, outcome, 240)

    assert result.completed, explain(result)
    history = read_history(result.run_dir)
    assert history[1]["clients_failed"] == 1, history[1]
    assert history[1]["clients_succeeded"] == 2 and history[1]["model_updated"]
    assert history[2]["clients_succeeded"] == NUM_NODES, history[2]
    fresh = {w.pid for w in _workers(federation, node)}
    assert fresh and not fresh & {w.pid for w in killed}


def test_two_apps_on_one_node_each_get_their_own_worker(
    federation: Federation, data_dir: Path, tmp_path: Path
) -> None:
    """Another FAB (the app at another version) on the same SuperNodes: each node
    starts a worker for it beside the first app's, and the run completes."""
    copy = tmp_path / "app-copy"
    for part in ("fl_app", "strategies"):
        shutil.copytree(
            REPO / part, copy / part, ignore=shutil.ignore_patterns("__pycache__")
        )
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, copy / name)
    pyproject = copy / "pyproject.toml"
    pyproject.write_text(
        pyproject.read_text().replace('version = "0.1.0"', 'version = "0.1.1"', 1)
    )
    nodes = [f"supernode-{i}" for i in range(NUM_NODES)]
    before = {node: _workers_started(federation, node) for node in nodes}
    app_dir, federation.app_dir = federation.app_dir, copy
    try:
        config = run_config(data_dir, tmp_path / "out", num_server_rounds=1)
        result = finish(*run_in_background(federation, config), 180)
    finally:
        federation.app_dir = app_dir
    assert result.completed, explain(result)
    for node, hashes in before.items():
        started = _workers_started(federation, node)
        new = started[len(hashes) :]
        assert len(new) == 1 and new[0] not in hashes, (node, started)


def test_run_survives_a_killed_supernode(
    federation: Federation, data_dir: Path, tmp_path: Path
) -> None:
    victim = federation.supernodes[f"supernode-{NUM_NODES - 1}"]
    trained_before = victim.log_path.read_text().count("Receiving: train")
    config = run_config(
        data_dir,
        tmp_path,
        num_server_rounds=1,  # all 3 nodes available, so that 2 survive the kill
        round_timeout=ROUND_TIMEOUT,
    )
    thread, outcome = run_in_background(federation, config)
    deadline = time.monotonic() + 120
    while victim.log_path.read_text().count("Receiving: train") == trained_before:
        assert thread.is_alive() and time.monotonic() < deadline, outcome
        time.sleep(0.2)
    federation.kill_supernode(victim.name)  # mid-training, in round 1
    result = finish(thread, outcome, 180)

    assert result.completed, explain(result)
    history = read_history((tmp_path / "latest").resolve())
    assert [row["round"] for row in history] == [0, 1]
    assert history[1]["model_updated"] is True
    assert history[1]["clients_failed"] >= 1, history[1]
    # The survivors' replies were aggregated: the crash cost one client, not the round.
    assert history[1]["clients_succeeded"] >= 2, history[1]
