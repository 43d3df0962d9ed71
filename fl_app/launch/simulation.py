"""Run the app on a simulation SuperLink: the one way scripts and studies do it.

``SimulationSuperLink`` starts Flower's SuperLink in simulation mode as a child
process (private ``FLWR_HOME`` in a temporary folder, a free port) the first time a
run needs it, and stops it on exit, on an error, on Ctrl-C and on SIGTERM.
``run`` submits the app with ``flwr run``, streams its log, then asks Flower how the
run really ended (``flwr run --stream`` exits 0 even for a failed run) and finds
the folder the ServerApp wrote: a ``RunOutcome``, as ``Federation.run`` returns.

Which Ray the simulation uses is said, never left to Ray: the simulation process
(which the SuperLink starts and which inherits its environment) calls ``ray.init()``
without an address, and Ray then joins the cluster the latest ``ray start`` on this
machine recorded (``/tmp/ray/ray_current_cluster``), whoever started it. So the
SuperLink gets ``RAY_ADDRESS=local`` (a Ray of its own, stopped with the run), or
the address of the cluster to join (``ray_address``, ``docs/ray-cluster.md``).
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from fl_app.launch.flower_cli import (
    Echo,
    FlowerHome,
    simulation_config,
    start_superlink,
)
from fl_app.launch.processes import ManagedProcess, free_port
from fl_app.launch.runs import APP_DIR, RunOutcome, SuperLinkOwner, run_folder

__all__ = ["APP_DIR", "RunOutcome", "SimulationSuperLink", "run_folder"]


class SimulationSuperLink(SuperLinkOwner):
    """One simulation SuperLink for any number of runs; use as a context manager.

    ``log_dir`` receives ``superlink.log``. The SuperLink starts with the first
    ``run`` (or ``start``), so a caller whose runs are all done before needs none.
    """

    connection = "sim"

    def __init__(
        self,
        log_dir: Path,
        *,
        app_dir: Path = APP_DIR,
        env: Mapping[str, str] | None = None,
        ray_address: str | None = None,
    ) -> None:
        """``env``: variables added to the SuperLink's environment, which the
        simulation (ServerApp and Ray actors) inherits (``fl_app.kernels``).
        ``ray_address``: ``HOST:PORT`` of a running Ray cluster (``ray start
        --head``) for the simulation to join; None starts a local Ray per run."""
        super().__init__(app_dir)
        self.log_dir = Path(log_dir)
        self.extra_env = {**(env or {}), "RAY_ADDRESS": ray_address or "local"}
        self.home: FlowerHome | None = None
        self.superlink: ManagedProcess | None = None
        self._stack: ExitStack | None = None

    def __enter__(self) -> SimulationSuperLink:
        self._stack = ExitStack()
        return super().__enter__()

    def stop(self) -> None:
        """Stop the SuperLink (if it started) and remove its ``FLWR_HOME``."""
        stack, self._stack = self._stack, None
        self.home = self.superlink = None
        if stack is not None:
            stack.close()

    def start(self) -> FlowerHome:
        """The SuperLink's ``FLWR_HOME``, starting the SuperLink if needed (a caller
        that times its runs starts it first, so the SuperLink's start-up is not
        counted)."""
        if self._stack is None:
            raise RuntimeError("use SimulationSuperLink as a context manager")
        if self.home is None:
            tmp = self._stack.enter_context(
                tempfile.TemporaryDirectory(prefix="fl-app-flwr-")
            )
            home = FlowerHome(Path(tmp))
            port = free_port()
            home.add_connection(self.connection, f"127.0.0.1:{port}")
            args = ["--insecure", "--simulation", "--isolation", "subprocess"]
            args += ["--database", str(home.path / "state.db")]
            log_path = self.log_dir / "superlink.log"
            env = {**home.env(), **self.extra_env}
            self.superlink = start_superlink(args, port, log_path, env)
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
        echo: Echo = False,
    ) -> RunOutcome:
        """Run the app once with ``run_config`` (its ``output-dir`` absolute) on
        ``num_supernodes`` virtual clients; how it ended, whatever the ending."""
        return self._run(
            self.start(),
            run_config,
            log_path=log_path,
            federation_config=simulation_config(num_supernodes, cpus_per_client),
            timeout=timeout,
            echo=echo,
        )
