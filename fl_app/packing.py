"""Several virtual clients in one Flower message: the wire format of a packed round.

In simulation a Flower message costs about as much as training a small client (one
pass through Flower's dispatch loop and one Ray call each way), so a round of many
small clients was mostly messages. The server may therefore deal several sampled
partitions to one node in one message (``clients-per-message``); the node trains
each in turn from the same received weights, exactly as separate messages would,
and answers with every client's reply one after the other. The server splits the
reply back into one reply per client before its pipeline sees anything, so
ordering, decoding, validation, privacy, aggregation and the history are the ones
of an unpacked round, bit for bit.

The format, both ways:

* down: the fit config names ``partition-ids`` (``"3,17,42"``) instead of
  ``partition-id``;
* up: the arrays of each client's reply, concatenated in that order, and one
  metric ``packed``: a JSON list with, per client, its partition, ``n_k``, how many
  of the arrays are its own and its own metrics.

Never used for SecAgg+ (its protocol is per node) nor where each node holds its own
partition (deployment): ``fl_app.config`` refuses both.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from flwr.common import NDArrays, Scalar

from fl_app import keys


def format_partitions(partitions: Sequence[int]) -> str:
    """``[3, 17, 42]`` -> ``"3,17,42"``: the down direction's ``partition-ids``."""
    return ",".join(str(int(p)) for p in partitions)


def unpack_partitions(
    config: dict[str, Scalar],
) -> Iterator[tuple[int, dict[str, Scalar]]]:
    """Each partition of a packed fit config with the config a message of its own
    would have carried (``partition-id`` instead of ``partition-ids``)."""
    if not config.get(keys.EXPERIMENT):
        # Without it each client's state would share the node's Context.state.
        raise ValueError(
            "a packed message must name the experiment: each client's state is "
            "kept by partition in the node's store (fl_app.client_state)"
        )
    single = {k: v for k, v in config.items() if k != keys.PARTITION_IDS}
    for part in str(config[keys.PARTITION_IDS]).split(","):
        yield int(part), {**single, keys.PARTITION_ID: int(part)}


def pack_replies(
    replies: Sequence[tuple[int, tuple[NDArrays, int, dict[str, Scalar]]]],
) -> tuple[NDArrays, int, dict[str, Scalar]]:
    """``(partition, fit reply)`` pairs as one reply: the arrays in order, ``n``
    summed (Flower's own bookkeeping), each client's part listed under ``packed``."""
    arrays: NDArrays = []
    entries = []
    for partition, (client_arrays, num_examples, metrics) in replies:
        arrays.extend(client_arrays)
        entries.append(
            {
                "partition": partition,
                "num_examples": num_examples,
                "num_arrays": len(client_arrays),
                "metrics": metrics,
            }
        )
    total = sum(entry["num_examples"] for entry in entries)
    return arrays, total, {keys.PACKED: json.dumps(entries)}


@dataclass(frozen=True)
class PackedEntry:
    """One client's share of a packed reply: where its arrays are, and its reply."""

    partition: int
    num_examples: int
    start: int
    stop: int
    metrics: dict[str, Scalar]


class PackingError(ValueError):
    """A packed reply that does not describe what was dealt: none of it is used."""


def packed_entries(
    metrics: dict[str, Scalar], num_arrays: int, dealt: Sequence[int]
) -> list[PackedEntry]:
    """The entries of a packed reply, checked against the ``dealt`` partitions and
    the ``num_arrays`` it holds; PackingError says what is wrong."""
    try:
        raw = json.loads(str(metrics[keys.PACKED]))
        entries = []
        start = 0
        for item in raw:
            stop = start + int(item["num_arrays"])
            metrics_k = {
                str(k): v
                for k, v in dict(item["metrics"]).items()
                if isinstance(v, (int, float, str, bool))
            }
            entries.append(
                PackedEntry(
                    int(item["partition"]),
                    int(item["num_examples"]),
                    start,
                    stop,
                    metrics_k,
                )
            )
            start = stop
    except (KeyError, TypeError, ValueError) as error:
        raise PackingError(f"unreadable '{keys.PACKED}' metric: {error}") from None
    if [e.partition for e in entries] != list(dealt):
        raise PackingError(
            f"answers for partitions {[e.partition for e in entries]}, "
            f"dealt {list(dealt)}"
        )
    if start != num_arrays or any(e.stop < e.start for e in entries):
        raise PackingError(
            f"its entries account for {start} arrays, the reply holds {num_arrays}"
        )
    return entries
