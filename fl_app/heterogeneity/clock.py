"""A virtual clock for synchronous rounds: how long each client takes, and whom the
server keeps when it stops waiting.

A synchronous round lasts as long as the server waits for its slowest kept client,
so with heterogeneous devices the stragglers set the pace. The two standard remedies
are a deadline (FedScale, Lai et al., ICML 2022) and over-commitment: select more
clients than needed and keep the first to report (Bonawitz et al., "Towards Federated
Learning at Scale", MLSys 2019). FedProx (Li et al., MLSys 2020) instead keeps a
straggler's partial work. ``round_timing`` simulates all three from per-client
seconds, so a study can replay a round without sleeping through it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from fl_app.heterogeneity.devices import DeviceProfile


def compute_seconds(profile: DeviceProfile, *, num_examples: int, epochs: int) -> float:
    """Local training time: epochs * num_examples * seconds_per_example.

    Linear in examples processed, as FedScale models compute: per-step overheads
    and batch-size effects are ignored.
    """
    _non_negative("num_examples", num_examples)
    _non_negative("epochs", epochs)
    return epochs * num_examples * profile.seconds_per_example


def client_seconds(
    profile: DeviceProfile,
    *,
    bytes_down: int,
    bytes_up: int,
    num_examples: int,
    epochs: int,
    work: float = 1.0,
) -> float:
    """Seconds from round start until the client's update reaches the server:

        bytes_down * 8 / down_bps                          (download the model)
      + work * epochs * num_examples * seconds_per_example (train locally)
      + bytes_up * 8 / up_bps                              (upload the update)

    ``work`` is the share of its local steps the client took (below 1 for FedProx's
    partial work, ``work_fraction``). The three run one after another; latency,
    retries and server-side time are not modelled. ``compute_seconds`` is the
    middle term at full work, which ``round_timing`` needs for partial work.
    """
    _non_negative("bytes_down", bytes_down)
    _non_negative("bytes_up", bytes_up)
    if not 0 <= work <= 1:
        raise ValueError(f"work must be in [0, 1], got {work!r}")
    return (
        bytes_down * 8 / profile.down_bps
        + work * compute_seconds(profile, num_examples=num_examples, epochs=epochs)
        + bytes_up * 8 / profile.up_bps
    )


def work_fraction(
    profile: DeviceProfile,
    *,
    deadline: float,
    bytes_down: int,
    bytes_up: int,
    num_examples: int,
    epochs: int,
) -> float:
    """The share of its local computation a device can do and still deliver its
    update by ``deadline`` (FedProx's partial work, as ``round_timing`` prices it):

        clamp((deadline - download - upload) / compute, 0, 1)

    1 when it finishes in time, 0 when its transfers alone miss the deadline (or
    it has nothing to compute). A device knows its own speed and the size of what
    it received; the upload is that of the update it will send.
    """
    if not deadline >= 0:
        raise ValueError(f"deadline must be >= 0, got {deadline!r}")
    transfer = client_seconds(
        profile, bytes_down=bytes_down, bytes_up=bytes_up, num_examples=0, epochs=0
    )
    compute = compute_seconds(profile, num_examples=num_examples, epochs=epochs)
    if compute == 0:
        return 1.0 if transfer <= deadline else 0.0
    return min(1.0, max(0.0, (deadline - transfer) / compute))


@dataclass(frozen=True)
class RoundTiming:
    """What the server does with one round's clients.

    ``finished``, ``partial`` and ``late`` split the round's clients: ``finished``
    (full updates kept) and ``late`` (not used this round: past the deadline or past
    the keep-th arrival) in finishing order, ``partial`` maps a straggler whose
    partial work is kept to the fraction of its local computation it completed.
    ``round_seconds`` is when the server stops waiting, from round start.
    """

    finished: tuple[int, ...]
    late: tuple[int, ...]
    partial: dict[int, float]
    round_seconds: float


def round_timing(
    seconds: Mapping[int, float],
    *,
    deadline: float | None,
    keep: int | None,
    partial_work: bool,
    compute_seconds: Mapping[int, float] | None = None,
) -> RoundTiming:
    """Whom the server keeps, given each client's seconds from round start.

    Clients are ordered by finish time, ties by client id. A client finishing
    exactly at the deadline is on time. With K = ``keep`` (None: every client; a
    keep above the client count keeps them all), the server keeps the first K
    on-time clients and stops waiting:

    * at the K-th arrival, if K clients are on time (no deadline and no keep: every
      client is kept and the round lasts as long as the slowest; no clients: an
      empty round of 0 s);
    * else at the deadline, having kept fewer than K.

    ``partial_work`` (FedProx's variable local work) matters only when the round
    ends at the deadline. A late client k then trains until it must start its
    upload and sends what it has: assuming it downloads first and its upload must
    also end by the deadline, with c_k = ``compute_seconds[k]`` and communication
    time seconds[k] - c_k, its fraction is

        clamp((deadline - (seconds[k] - c_k)) / c_k, 0, 1)

    and it is excluded if that is 0 (its download and upload alone miss the
    deadline; c_k = 0 counts as 0). A positive fraction implies its download ended
    before the deadline. Partial clients fill at most the K - len(finished) free
    slots, most work done first (ties by client id); their updates arrive at the
    deadline, which stays the round's end. The caller scales a partial client's
    local steps by its fraction.
    """
    for client, value in seconds.items():
        if not value >= 0:  # also refuses NaN; inf (never arrives) is allowed
            raise ValueError(f"seconds[{client}] must be >= 0, got {value!r}")
    if deadline is not None and not deadline >= 0:
        raise ValueError(f"deadline must be >= 0 or None, got {deadline!r}")
    if keep is not None and keep < 1:
        raise ValueError(f"keep must be >= 1 or None, got {keep!r}")
    if partial_work and deadline is not None and compute_seconds is None:
        raise ValueError("compute_seconds is required when partial_work is on")

    order = sorted(seconds, key=lambda client: (seconds[client], client))
    slots = len(order) if keep is None else min(keep, len(order))
    on_time = [k for k in order if deadline is None or seconds[k] <= deadline]
    finished = on_time[:slots]
    if len(finished) == slots:
        end = seconds[finished[-1]] if finished else 0.0
        kept = set(finished)
        return RoundTiming(
            finished=tuple(finished),
            late=tuple(k for k in order if k not in kept),
            partial={},
            round_seconds=end,
        )

    assert deadline is not None  # fewer than `slots` on time needs a deadline
    partial: dict[int, float] = {}
    if partial_work:
        assert compute_seconds is not None
        fractions = {
            k: _fraction(k, seconds[k], compute_seconds, deadline)
            for k in order
            if seconds[k] > deadline
        }
        ranked = sorted(
            (k for k, f in fractions.items() if f > 0),
            key=lambda k: (-fractions[k], k),
        )
        partial = {k: fractions[k] for k in ranked[: slots - len(finished)]}
    kept = set(finished) | set(partial)
    return RoundTiming(
        finished=tuple(finished),
        late=tuple(k for k in order if k not in kept),
        partial=partial,
        round_seconds=float(deadline),
    )


def _fraction(
    client: int, total: float, compute: Mapping[int, float], deadline: float
) -> float:
    if client not in compute:
        raise ValueError(f"compute_seconds has no entry for late client {client}")
    c = compute[client]
    if not 0 <= c <= total:
        raise ValueError(
            f"compute_seconds[{client}] must be in [0, seconds[{client}]], got {c!r}"
        )
    if c == 0 or math.isinf(total):
        return 0.0
    return min(1.0, max(0.0, (deadline - (total - c)) / c))


def _non_negative(name: str, value: float) -> None:
    if not value >= 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")
