"""Run the app on a simulation SuperLink: the one way scripts and studies do it.

``SimulationSuperLink`` starts Flower's SuperLink in simulation mode as a child
process (private ``FLWR_HOME`` in a temporary folder, a free port) the first time a
run needs it, and stops it on exit, on an error, on Ctrl-C and on SIGTERM.
``run`` submits the app with ``flwr run``, streams its log, then asks Flower how the
run really ended (``flwr run --stream`` exits 0 even for a failed run) and finds
the folder the ServerApp wrote.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from fl_app.launch.runner import (
    FlowerHome,
    ManagedProcess,
    flwr_run,
    free_port,
    run_status,
    sigterm_as_interrupt,
    simulation_config,
    start_simulation_superlink,
    uninterruptible,
)

APP_DIR = Path(__file__).resolve().parents[2]
CONNECTION = "sim"
COMPLETED = "finished:completed"


@dataclass(frozen=True)
class RunOutcome:
    """How one ``flwr run`` ended, and where its results and log are."""

    run_id: int
    status: str  # Flower's, e.g. "finished:completed" or "finished:failed"
    details: str
    run_dir: Path | None  # the folder the ServerApp wrote; None if none was found
    log_path: Path

    @property
    def completed(self) -> bool:
        return self.status == COMPLETED and self.run_dir is not None


class SimulationSuperLink:
    """One simulation SuperLink for any number of runs; use as a context manager.

    ``log_dir`` receives ``superlink.log``. The SuperLink starts with the first
    ``run``, so a caller whose runs are all done before needs none.
    """

    def __init__(self, log_dir: Path, *, app_dir: Path = APP_DIR) -> None:
        self.log_dir = Path(log_dir)
        self.app_dir = app_dir
        self.home: FlowerHome | None = None
        self.superlink: ManagedProcess | None = None
        self._stack: ExitStack | None = None

    def __enter__(self) -> SimulationSuperLink:
        self._stack = ExitStack()
        self._stack.enter_context(sigterm_as_interrupt())
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        stack, self._stack = self._stack, None
        self.home = self.superlink = None
        if stack is not None:
            with uninterruptible():  # a second Ctrl-C must not cut clean-up short
                stack.close()

    def start(self) -> FlowerHome:
        """The SuperLink's ``FLWR_HOME``, starting the SuperLink if needed."""
        if self._stack is None:
            raise RuntimeError("use SimulationSuperLink as a context manager")
        if self.home is None:
            tmp = self._stack.enter_context(
                tempfile.TemporaryDirectory(prefix="fl-app-flwr-")
            )
            home = FlowerHome(Path(tmp))
            port = free_port()
            home.add_connection(CONNECTION, f"127.0.0.1:{port}")
            self.superlink = start_simulation_superlink(home, port, self.log_dir)
            self._stack.callback(self.superlink.stop)
            self.home = home
        return self.home

    def run(
        self,
        run_config: Mapping[str, Any],
        *,
        num_supernodes: int,
        cpus_per_client: int = 1,
        log_path: Path,
        timeout: float = 3600,
        echo: bool = False,
    ) -> RunOutcome:
        """Run the app once with ``run_config`` (its ``output-dir`` absolute) on
        ``num_supernodes`` virtual clients; how it ended, whatever the ending."""
        home = self.start()
        log_path.parent.mkdir(parents=True, exist_ok=True)
        run_id = flwr_run(
            self.app_dir,
            CONNECTION,
            home,
            run_config,
            log_path=log_path,
            federation_config=simulation_config(num_supernodes, cpus_per_client),
            timeout=timeout,
            echo=echo,
        )
        status = run_status(CONNECTION, home, run_id)
        return RunOutcome(
            run_id=run_id,
            status=str(status.get("status", "")),
            details=str(status.get("status-details", "")),
            run_dir=run_folder(run_config, run_id),
            log_path=log_path,
        )


def run_folder(run_config: Mapping[str, Any], run_id: int) -> Path | None:
    """The folder run ``run_id`` wrote: ``resume-dir`` when it resumed, else the
    one ``<output-dir>/<timestamp>-run<id>`` (None if there is not exactly one)."""
    if run_config.get("resume"):
        return Path(str(run_config["resume-dir"]))
    output_dir = Path(str(run_config["output-dir"]))
    found = [p for p in output_dir.glob(f"*-run{run_id}*") if p.is_dir()]
    return found[0] if len(found) == 1 else None
