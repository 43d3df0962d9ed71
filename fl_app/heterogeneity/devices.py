"""Simulated client devices: how fast each one computes and transfers, and when it is
online.

Cross-device FL runs on phones that differ by an order of magnitude in speed and that
are reachable only part of the day (FedScale, Lai et al., ICML 2022). To study
deadlines, over-commitment and client selection without real phones, every client
gets a ``DeviceProfile`` drawn once from a ``DeviceSpec``; the clock
(``fl_app.heterogeneity.clock``) turns a profile and a round's work into seconds.
Pure NumPy and seeded: the same seed gives the same devices.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

# Salt for the device streams, so that a run's seed used elsewhere (sampling,
# batches) does not also give the devices' draws.
_DEVICE_SALT = 0x5E7


@dataclass(frozen=True)
class DeviceSpec:
    """The distributions that client devices are drawn from.

    The shapes follow FedScale's traces, the numbers are this module's assumptions
    in the range those traces show (not fitted to them):

    * compute: seconds per training example, log-normal with median
      ``median_seconds_per_example`` (5 ms) and log-sigma ``compute_sigma`` (0.8).
      FedScale's measured device profiles (AI Benchmark) span about an order of
      magnitude; with sigma 0.8 the 10th and 90th percentiles are 7.8x apart, the
      5th and 95th 14x.
    * network: download and upload bandwidth in bits/s, log-normal with medians 20
      and 5 Mbit/s and log-sigma 1.0 each (FedScale's MobiPerf traces: wide spread,
      uplink slower than downlink). Compute, download and upload are drawn
      independently, as FedScale pairs its compute and network traces.
    * availability: each client is online for ``online_fraction`` of a virtual day
      of ``day_s`` seconds, in one contiguous window that starts at a seeded phase
      uniform in [0, day_s) (a diurnal pattern: FedScale's availability traces
      follow the time of day). 1.0, the default, means always online.
    """

    median_seconds_per_example: float = 0.005
    compute_sigma: float = 0.8
    median_down_bps: float = 20e6
    down_sigma: float = 1.0
    median_up_bps: float = 5e6
    up_sigma: float = 1.0
    online_fraction: float = 1.0
    day_s: float = 86_400.0

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first field that cannot describe devices."""
        for name in ("median_seconds_per_example", "median_down_bps", "median_up_bps"):
            _require(name, getattr(self, name), "> 0", lambda v: 0 < v < math.inf)
        for name in ("compute_sigma", "down_sigma", "up_sigma"):
            _require(name, getattr(self, name), ">= 0", lambda v: 0 <= v < math.inf)
        _require(
            "online_fraction", self.online_fraction, "in (0, 1]", lambda v: 0 < v <= 1
        )
        _require("day_s", self.day_s, "> 0", lambda v: 0 < v < math.inf)


@dataclass(frozen=True)
class DeviceProfile:
    """One client's device: its speeds and its daily online window.

    The window is [online_start_s, online_start_s + online_fraction * day_s) modulo
    ``day_s``: it may wrap past the end of the day into the next one.
    """

    seconds_per_example: float
    down_bps: float
    up_bps: float
    online_start_s: float
    online_fraction: float
    day_s: float

    def is_online(self, t: float) -> bool:
        """Whether the client is reachable at virtual time ``t`` (seconds since the
        simulation began; any day, negative times included)."""
        if self.online_fraction >= 1:
            return True
        offset = (t - self.online_start_s) % self.day_s
        return offset < self.online_fraction * self.day_s


def draw_profiles(spec: DeviceSpec, num_clients: int, seed: int) -> list[DeviceProfile]:
    """Profiles of clients 0 .. num_clients - 1, the same for the same arguments.

    Each quantity comes from its own stream, ``np.random.default_rng([seed, 0x5E7,
    i])``, drawn as one array in client order. So client k's profile depends only on
    (spec, seed, k): it is unchanged when ``num_clients`` grows (a NumPy stream
    fills an array in order, so a longer draw extends a shorter one), and changing
    one quantity's distribution leaves the others' draws alone.
    """
    spec.validate()
    if num_clients < 0:
        raise ValueError(f"num_clients must be >= 0, got {num_clients}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")

    def stream(index: int) -> np.random.Generator:
        return np.random.default_rng([seed, _DEVICE_SALT, index])

    def log_normal(index: int, median: float, sigma: float) -> list[float]:
        # median * exp(sigma z) rather than rng.lognormal: sigma 0 gives the median
        # exactly, every client alike.
        z = stream(index).standard_normal(num_clients)
        return (median * np.exp(sigma * z)).tolist()

    compute = log_normal(0, spec.median_seconds_per_example, spec.compute_sigma)
    down = log_normal(1, spec.median_down_bps, spec.down_sigma)
    up = log_normal(2, spec.median_up_bps, spec.up_sigma)
    start = stream(3).uniform(0.0, spec.day_s, num_clients).tolist()
    fraction, day = spec.online_fraction, spec.day_s
    return [
        DeviceProfile(c, d, u, s, fraction, day)
        for c, d, u, s in zip(compute, down, up, start, strict=True)
    ]


@lru_cache(maxsize=4)
def device_profiles(
    spec: DeviceSpec, num_clients: int, seed: int
) -> tuple[DeviceProfile, ...]:
    """``draw_profiles``, drawn once a process for the same arguments: the server's
    clock and every client process ask for the same devices round after round."""
    return tuple(draw_profiles(spec, num_clients, seed))


def _require(name: str, value: float, rule: str, ok: Callable[[float], bool]) -> None:
    if not ok(value):
        raise ValueError(f"DeviceSpec.{name} must be {rule}, got {value!r}")
