"""The same history on every CPU: pinning torch's CPU kernels (``reproducible``).

torch picks its kernels for the CPU it runs on. ATen's vectorised loops use the
widest instruction set there is (AVX-512 on one machine, AVX2 on another), MKL's
matrix products and oneDNN's primitives dispatch on their own. Each adds numbers in
its own order, so a matrix product's last bits differ between CPUs; SGD amplifies
them, and from round 6 on the default job's test accuracies differ between the
README's Intel machine and an AMD one. Three environment variables fix the code
paths whatever the CPU (``PINNED_KERNELS``): with them both machines give the same
history, bit for bit.

Each library reads its variable once, when it first runs, so it must be set before
torch loads, in every process that computes: the ServerApp's (central evaluation),
every Ray actor's or ``flwr-clientapp``'s (training). ``pin_kernels`` does it in the
process that calls it, and refuses with a ``ConfigError`` naming ``reproducible`` if
torch was loaded first with other settings. ``scripts/simulate.py --reproducible``
and ``scripts/local_federation.py --reproducible`` also start every Flower process
with the variables set (``pinned_env``), so nothing depends on import order.

This module imports no torch, on purpose.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, MutableMapping

from fl_app.config import ConfigError

#: The kernel settings that give the same results on Intel (AVX-512) and AMD (AVX2)
#: here (docs/reproducibility.md has the measurements): MKL's conditional numerical
#: reproducibility in its portable mode, oneDNN at most SSE4.1, ATen's scalar loops.
PINNED_KERNELS: dict[str, str] = {
    "MKL_CBWR": "COMPATIBLE",
    "ONEDNN_MAX_CPU_ISA": "SSE41",
    "ATEN_CPU_CAPABILITY": "default",
}


def pinned_env() -> dict[str, str]:
    """The variables to give a process that must compute with pinned kernels."""
    return dict(PINNED_KERNELS)


def unpinned(environ: Mapping[str, str] | None = None) -> dict[str, str | None]:
    """The pinned variables ``environ`` lacks or sets otherwise, with its values."""
    environ = os.environ if environ is None else environ
    return {
        name: environ.get(name)
        for name, value in PINNED_KERNELS.items()
        if environ.get(name) != value
    }


def pin_kernels(
    environ: MutableMapping[str, str] | None = None,
    modules: Mapping[str, object] | None = None,
) -> None:
    """Pin the kernels of this process, before torch loads.

    Nothing to do when the process was started with them (``pinned_env``). Otherwise
    they are set now if torch is not loaded yet; if it is, its kernels are already
    chosen, and running on would give numbers that differ by CPU: ConfigError.
    """
    environ = os.environ if environ is None else environ
    modules = sys.modules if modules is None else modules
    missing = unpinned(environ)
    if not missing:
        return
    if "torch" in modules:
        settings = " ".join(f"{k}={v}" for k, v in PINNED_KERNELS.items())
        found = ", ".join(f"{k}={v!r}" for k, v in missing.items())
        raise ConfigError(
            "reproducible",
            f"this process (pid {os.getpid()}) loaded torch before its CPU kernels "
            f"could be pinned ({found}): start the SuperLink and SuperNodes with "
            f"{settings} in their environment, or run through scripts/simulate.py "
            "or scripts/local_federation.py with --reproducible",
        )
    environ.update(PINNED_KERNELS)
