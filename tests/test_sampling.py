"""Seeded client sampling in BaseStrategy: configure_fit picks C·K clients by partition
id, reproducibly for a seed whatever the node ids and registration order, differently
for another seed or round; it sends the RunConfig's fit config, asks each node for its
partition only once, and stops with NotEnoughClientsError naming
'min-available-clients' when too few nodes connect."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytest
from flwr.common import (
    Code,
    FitRes,
    Parameters,
    Status,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.server.client_manager import SimpleClientManager
from flwr.server.client_proxy import ClientProxy

import strategies
from fl_app.config import ConfigError, RunConfig
from fl_app.model import get_weights
from fl_app.packing import pack_replies
from strategies.sampling import NotEnoughClientsError
from tests.fakes import FakeNode

NUM_NODES = 20


def partition_of(proxy: ClientProxy) -> int:
    assert isinstance(proxy, FakeNode)
    return proxy.partition_id


def make_manager(
    num_nodes: int, shuffle_seed: int
) -> tuple[SimpleClientManager, list[FakeNode]]:
    """Nodes with random cids (as Flower's node ids are), registered in random order."""
    rng = np.random.default_rng(shuffle_seed)
    nodes = [
        FakeNode(str(int(rng.integers(1, 2**62))), partition_id=k)
        for k in range(num_nodes)
    ]
    manager = SimpleClientManager()
    for i in rng.permutation(num_nodes):
        assert manager.register(nodes[i])
    return manager, nodes


def make_strategy(mnist_dir: Path, **changes: object) -> strategies.FedAvg:
    base = RunConfig(
        dataset="mnist",
        data_dir=str(mnist_dir),
        partition_source="node",
        fraction_fit=0.25,
        min_fit_clients=2,
        min_available_clients=2,
        min_available_timeout=1.0,
    )
    return strategies.FedAvg(base.replace(**changes), run_dir=None)


def parameters_of(strategy: strategies.FedAvg) -> Parameters:
    return ndarrays_to_parameters(get_weights(strategy.model))


def fit_partitions(
    strategy: strategies.FedAvg, manager: SimpleClientManager, server_round: int
) -> list[int]:
    chosen = strategy.configure_fit(server_round, parameters_of(strategy), manager)
    partitions = [partition_of(proxy) for proxy, _ in chosen]
    assert len(set(partitions)) == len(partitions), "a client was picked twice"
    return partitions


def test_configure_fit_picks_a_fraction_of_the_clients(mnist_dir: Path) -> None:
    manager, _ = make_manager(NUM_NODES, shuffle_seed=0)
    strategy = make_strategy(mnist_dir)
    assert len(fit_partitions(strategy, manager, 1)) == 5  # 0.25 * 20


def test_sample_size_never_below_min_fit_clients(mnist_dir: Path) -> None:
    manager, _ = make_manager(NUM_NODES, shuffle_seed=0)
    strategy = make_strategy(
        mnist_dir, fraction_fit=0.01, min_fit_clients=3, min_available_clients=3
    )
    assert len(fit_partitions(strategy, manager, 1)) == 3


def test_same_seed_same_partitions_whatever_the_node_ids(mnist_dir: Path) -> None:
    manager_a, nodes_a = make_manager(NUM_NODES, shuffle_seed=1)
    manager_b, nodes_b = make_manager(NUM_NODES, shuffle_seed=2)
    assert {n.cid for n in nodes_a}.isdisjoint(n.cid for n in nodes_b)
    assert list(manager_a.all()) != list(manager_b.all())
    strategy_a = make_strategy(mnist_dir, seed=11)
    strategy_b = make_strategy(mnist_dir, seed=11)
    for server_round in range(1, 6):
        assert fit_partitions(strategy_a, manager_a, server_round) == fit_partitions(
            strategy_b, manager_b, server_round
        )


def test_other_seed_or_round_picks_other_clients(mnist_dir: Path) -> None:
    manager, _ = make_manager(NUM_NODES, shuffle_seed=3)
    strategy = make_strategy(mnist_dir, seed=11)
    other = make_strategy(mnist_dir, seed=12)
    rounds = range(1, 9)
    mine = [frozenset(fit_partitions(strategy, manager, r)) for r in rounds]
    theirs = [frozenset(fit_partitions(other, manager, r)) for r in rounds]

    # Another seed: almost every round differs (C(20, 5) = 15,504 possible sets).
    assert sum(a == b for a, b in zip(mine, theirs, strict=True)) <= 1
    # Another round: the sets change from round to round ...
    assert len(set(mine)) >= len(mine) - 1
    # ... and over 8 rounds reach well beyond a fixed handful of partitions.
    assert len(frozenset().union(*mine)) > 10


def test_fit_config_comes_from_the_run_config(mnist_dir: Path) -> None:
    manager, _ = make_manager(NUM_NODES, shuffle_seed=0)
    strategy = make_strategy(
        mnist_dir, learning_rate=0.03, local_epochs=3, batch_size=0, seed=7
    )
    parameters = parameters_of(strategy)
    chosen = strategy.configure_fit(4, parameters, manager)
    assert chosen
    for _, fit_ins in chosen:
        assert fit_ins.config == {
            "server-round": 4,
            "learning-rate": 0.03,
            "local-epochs": 3,
            "batch-size": 0,
            "seed": 7,
        }
        assert fit_ins.parameters.tensors == parameters.tensors


def test_each_node_is_asked_for_its_partition_once(mnist_dir: Path) -> None:
    manager, nodes = make_manager(NUM_NODES, shuffle_seed=4)
    strategy = make_strategy(mnist_dir, fraction_evaluate=0.25)
    for server_round in range(1, 5):
        fit_partitions(strategy, manager, server_round)
        strategy.configure_evaluate(server_round, parameters_of(strategy), manager)
    assert [n.property_calls for n in nodes] == [1] * NUM_NODES

    late = FakeNode("late-node", partition_id=NUM_NODES)
    manager.register(late)
    fit_partitions(strategy, manager, 5)
    assert late.property_calls == 1
    assert [n.property_calls for n in nodes] == [1] * NUM_NODES


def test_a_node_without_a_partition_is_never_picked(mnist_dir: Path) -> None:
    manager, _ = make_manager(NUM_NODES, shuffle_seed=5)
    broken = FakeNode("broken", partition_id=-5, fail=True)
    manager.register(broken)
    strategy = make_strategy(mnist_dir, fraction_fit=1.0)
    for server_round in range(1, 3):
        chosen = strategy.configure_fit(server_round, parameters_of(strategy), manager)
        assert len(chosen) == NUM_NODES
        assert broken not in [proxy for proxy, _ in chosen]


def test_evaluate_sample_is_independent_of_the_fit_sample(mnist_dir: Path) -> None:
    manager, _ = make_manager(NUM_NODES, shuffle_seed=6)
    strategy = make_strategy(mnist_dir, fraction_evaluate=0.25)
    no_eval = make_strategy(mnist_dir)
    parameters = parameters_of(strategy)
    assert no_eval.configure_evaluate(1, parameters, manager) == []
    same_rounds = 0
    for server_round in range(1, 6):
        fit = frozenset(fit_partitions(strategy, manager, server_round))
        chosen = strategy.configure_evaluate(server_round, parameters, manager)
        assert len(chosen) == 5
        assert all(ins.config["server-round"] == server_round for _, ins in chosen)
        same_rounds += fit == frozenset(partition_of(p) for p, _ in chosen)
    assert same_rounds <= 1


def test_too_few_clients_stop_with_a_clear_error(mnist_dir: Path) -> None:
    manager, _ = make_manager(1, shuffle_seed=7)
    strategy = make_strategy(
        mnist_dir, min_available_clients=2, min_available_timeout=1.0
    )
    started = time.monotonic()
    with pytest.raises(NotEnoughClientsError, match="'min-available-clients'"):
        strategy.configure_fit(1, parameters_of(strategy), manager)
    assert time.monotonic() - started < 30  # waited ~1 s, not the 300 s default


def test_an_infinite_timeout_is_refused_before_sampling(mnist_dir: Path) -> None:
    """inf would reach ``wait_for``'s integer timeout; the config refuses it first."""
    with pytest.raises(ConfigError, match="'min-available-timeout'"):
        make_strategy(mnist_dir, min_available_timeout=math.inf)


# ------------------------------------------------- partition-source = "server"
def dealt_partitions(
    strategy: strategies.FedAvg, manager: SimpleClientManager, server_round: int
) -> list[int]:
    """The partitions the server's instructions name, checked against its record."""
    chosen = strategy.configure_fit(server_round, parameters_of(strategy), manager)
    named = []
    for proxy, ins in chosen:
        assert ins.config["partition-id"] == strategy.sampler.partition_of(proxy)
        assert ins.config["num-partitions"] == (
            strategy.config.num_partitions or len(manager.all())
        )
        named.append(int(ins.config["partition-id"]))
    return named


def test_the_server_deals_partitions_without_asking_any_node(mnist_dir: Path) -> None:
    manager, nodes = make_manager(NUM_NODES, shuffle_seed=4)
    strategy = make_strategy(mnist_dir, partition_source="server")
    by_id = sorted(nodes, key=lambda node: int(node.cid))
    for server_round in (1, 2, 3):
        dealt_partitions(strategy, manager, server_round)
        chosen = strategy.configure_fit(server_round, parameters_of(strategy), manager)
        for proxy, ins in chosen:  # one partition a node: the p-th node serves p
            assert by_id.index(proxy) == ins.config["partition-id"]
    assert all(node.property_calls == 0 for node in nodes)


def test_more_virtual_clients_than_nodes(mnist_dir: Path) -> None:
    """num-partitions = K > N nodes: each round's m partitions go to m distinct
    nodes, and K is the population the draw (and the DP accountant) uses."""
    manager, nodes = make_manager(NUM_NODES, shuffle_seed=10)
    strategy = make_strategy(
        mnist_dir, partition_source="server", num_partitions=1000, fraction_fit=0.01
    )
    seen: set[int] = set()
    for server_round in range(1, 6):
        chosen = strategy.configure_fit(server_round, parameters_of(strategy), manager)
        assert len(chosen) == 10
        assert len({proxy.cid for proxy, _ in chosen}) == 10
        for proxy, ins in chosen:
            assert ins.config["num-partitions"] == 1000
            assert ins.config["partition-id"] == strategy.sampler.partition_of(proxy)
            seen.add(int(ins.config["partition-id"]))
    assert max(seen) >= NUM_NODES  # partitions beyond the node count are drawn
    assert strategy.sampler.drawn_from == 1000
    assert all(node.property_calls == 0 for node in nodes)


def test_too_few_nodes_for_the_sample_is_an_error(mnist_dir: Path) -> None:
    manager, _ = make_manager(NUM_NODES, shuffle_seed=11)
    strategy = make_strategy(
        mnist_dir, partition_source="server", num_partitions=1000, fraction_fit=0.05
    )
    with pytest.raises(NotEnoughClientsError, match="num-supernodes"):
        strategy.configure_fit(1, parameters_of(strategy), manager)


def test_a_resumed_run_over_another_number_of_partitions_is_refused(
    mnist_dir: Path,
) -> None:
    """One partition per node: a run resumed on fewer nodes would deal other data
    to every client, so its first round stops, saying how many it needs."""
    manager, _ = make_manager(NUM_NODES, shuffle_seed=5)
    strategy = make_strategy(mnist_dir, partition_source="server")
    strategy.sampler.resume(NUM_NODES + 5)
    with pytest.raises(NotEnoughClientsError, match=f"had {NUM_NODES + 5} partitions"):
        strategy.configure_fit(1, parameters_of(strategy), manager)
    strategy.sampler.resume(NUM_NODES)
    assert strategy.configure_fit(1, parameters_of(strategy), manager)


def test_dealt_partitions_follow_the_seed_not_the_node_ids(mnist_dir: Path) -> None:
    """Other node ids, same seed: the same partitions, as when nodes are asked."""
    manager_a, _ = make_manager(NUM_NODES, shuffle_seed=5)
    manager_b, _ = make_manager(NUM_NODES, shuffle_seed=6)
    dealt_a = make_strategy(mnist_dir, seed=3, partition_source="server")
    dealt_b = make_strategy(mnist_dir, seed=3, partition_source="server")
    asked = make_strategy(mnist_dir, seed=3)
    for server_round in range(1, 5):
        partitions = dealt_partitions(dealt_a, manager_a, server_round)
        assert partitions == dealt_partitions(dealt_b, manager_b, server_round)
        assert partitions == fit_partitions(asked, manager_a, server_round)


def test_evaluate_instructions_name_the_partition(mnist_dir: Path) -> None:
    manager, _ = make_manager(NUM_NODES, shuffle_seed=7)
    strategy = make_strategy(
        mnist_dir, partition_source="server", fraction_evaluate=0.5
    )
    chosen = strategy.configure_evaluate(1, parameters_of(strategy), manager)
    assert len(chosen) == NUM_NODES // 2
    for proxy, ins in chosen:
        assert ins.config["partition-id"] == strategy.sampler.partition_of(proxy)


def test_dealing_is_cheap_with_ten_thousand_nodes(mnist_dir: Path) -> None:
    """No message per node, and a round's draw costs milliseconds, not minutes."""
    manager, nodes = make_manager(10_000, shuffle_seed=8)
    strategy = make_strategy(mnist_dir, partition_source="server", fraction_fit=0.01)
    started = time.perf_counter()
    for server_round in (1, 2):
        assert len(dealt_partitions(strategy, manager, server_round)) == 100
    assert time.perf_counter() - started < 5.0
    assert sum(node.property_calls for node in nodes) == 0


@pytest.mark.parametrize(("target", "stops"), [(0.01, True), (1.0, False)])
def test_stop_at_accuracy_ends_the_run_once_reached(
    mnist_dir: Path, target: float, stops: bool
) -> None:
    manager, _ = make_manager(NUM_NODES, shuffle_seed=9)
    strategy = make_strategy(mnist_dir, stop_at_accuracy=target)
    assert fit_partitions(strategy, manager, 1)
    result = strategy.evaluate(1, parameters_of(strategy))
    assert result is not None
    assert result[1]["accuracy"] > 0.01  # an untrained 10-class model: about 0.1
    assert (strategy.stop_reason is not None) == stops
    assert bool(fit_partitions(strategy, manager, 2)) != stops


def test_packed_messages_split_back_into_one_reply_per_client(
    mnist_dir: Path, tmp_path: Path
) -> None:
    """clients-per-message = 4: 10 sampled clients travel in messages of 4, 3, 3
    naming their partitions; each reply splits back into its clients' replies
    (their own arrays, n_k and metrics), and a reply that answers for other
    partitions than dealt is dropped whole."""
    manager, _ = make_manager(NUM_NODES, shuffle_seed=5)
    config = make_strategy(
        mnist_dir, partition_source="server", fraction_fit=0.5
    ).config.replace(clients_per_message=4)
    strategy = strategies.FedAvg(config, run_dir=tmp_path)
    chosen = strategy.configure_fit(1, parameters_of(strategy), manager)
    packed = [strategy.sampler.partitions_of(proxy) for proxy, _ in chosen]
    assert [len(p) for p in packed] == [4, 3, 3]
    assert strategy.round_record.clients_sampled == 10
    for (_, ins), partitions in zip(chosen, packed, strict=True):
        assert ins.config["partition-ids"] == ",".join(map(str, partitions))
        assert "partition-id" not in ins.config

    def reply(partitions: tuple[int, ...]) -> FitRes:
        arrays, total, metrics = pack_replies(
            [(p, ([np.full(3, p, np.float32)], 10 + p, {"x": p})) for p in partitions]
        )
        return FitRes(
            Status(Code.OK, ""), ndarrays_to_parameters(arrays), total, metrics
        )

    good, wrong = (proxy for proxy, _ in chosen[:2])
    results = [(good, reply(packed[0])), (wrong, reply(packed[0]))]
    replies = strategy.sampler.unpacked(results)
    assert [strategy.sampler.partition_of(proxy) for proxy, _ in replies] == list(
        packed[0]
    )
    for proxy, res in replies:
        p = strategy.sampler.partition_of(proxy)
        assert res.num_examples == 10 + p and res.metrics == {"x": p}
        assert parameters_to_ndarrays(res.parameters)[0].tolist() == [p] * 3
