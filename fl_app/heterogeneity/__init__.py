"""System heterogeneity for simulated federated learning: devices that differ in speed
and availability, the virtual clock of a round, selection that uses what the server
has observed, and buffered asynchronous aggregation.

Pure, seeded NumPy with no Flower or torch imports, so studies, strategies and tests
can all replay the same devices and rounds without running them. ``devices``:
per-client compute speed, bandwidth and daily online window (FedScale, Lai et al.,
ICML 2022); ``clock``: round time under deadlines, over-commitment and FedProx's
partial work (Li et al., MLSys 2020); ``selection``: Power-of-Choice (Cho et al.,
AISTATS 2022) and Oort (Lai et al., OSDI 2021); ``fedbuff``: FedBuff's staleness
weighting and its asynchronous server on a virtual clock (Nguyen et al., AISTATS
2022).
"""

from fl_app.heterogeneity.clock import (
    RoundTiming,
    client_seconds,
    compute_seconds,
    round_timing,
    work_fraction,
)
from fl_app.heterogeneity.devices import (
    DeviceProfile,
    DeviceSpec,
    device_profiles,
    draw_profiles,
)
from fl_app.heterogeneity.fedbuff import (
    Arrival,
    AsyncScheduler,
    Start,
    buffered_update,
    staleness_weight,
    uniform_chooser,
)
from fl_app.heterogeneity.selection import oort_select, oort_utility, power_of_choice

__all__ = [
    "Arrival",
    "AsyncScheduler",
    "DeviceProfile",
    "DeviceSpec",
    "RoundTiming",
    "Start",
    "buffered_update",
    "client_seconds",
    "compute_seconds",
    "device_profiles",
    "draw_profiles",
    "oort_select",
    "oort_utility",
    "power_of_choice",
    "round_timing",
    "staleness_weight",
    "uniform_chooser",
    "work_fraction",
]
