"""What a family of processes costs in memory: the peak of their summed PSS.

RSS counts a page shared by several processes (the torch and Flower libraries every
Ray actor maps) once per process; PSS divides it among them, so the sum over a run's
processes is what the run costs. Sampled, because what matters is the peak and the
processes come and go (a ClientApp lives one message).
"""

from __future__ import annotations

import threading
from pathlib import Path

import psutil


class PssSampler:
    """Peak of the summed PSS of this process's descendants (and of itself when
    ``include_self``): what a run costs in memory, shared pages counted once.

    The SuperLink, the ``flwr`` CLI, the simulation process, Ray's daemons and its
    actors all descend from the process that started them, which is not part of
    the app (unless it is the app: a one-process run counts itself).
    """

    def __init__(self, include_self: bool, interval: float = 0.25) -> None:
        self.include_self = include_self
        self.interval = interval
        self.peak = 0
        self.at_peak: dict[str, int] = {}  # PSS by process name at the peak
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            by_name: dict[str, int] = {}
            me = psutil.Process()
            for process in [me] * self.include_self + me.children(recursive=True):
                try:
                    name = _process_name(process)
                    pss = process.memory_full_info().pss
                except psutil.Error:
                    continue
                by_name[name] = by_name.get(name, 0) + pss
            total = sum(by_name.values())
            if total > self.peak:
                self.peak, self.at_peak = total, by_name


def _process_name(process: psutil.Process) -> str:
    """A short label: the Flower or Ray program a process runs, else its name."""
    for part in process.cmdline()[:3]:
        base = Path(part).name
        if base.startswith(("flower-", "flwr-", "ray::", "raylet", "gcs_server")):
            return base.split(" ")[0]
    return process.name()
