"""A real Flower deployment on one machine: for scripts/local_federation.py and tests.

One SuperLink with TLS and SuperNode authentication, SuperNodes that each hold one
partition and authenticate with a registered key, and the ``flwr`` CLI pointed at the
SuperLink through a private ``FLWR_HOME``: the same processes and commands as on real
hosts, only on loopback. Every process is a ``ManagedProcess`` of the ``Federation``
(own process group, own log file), and ``stop()`` (also reached on error, Ctrl-C and
SIGTERM through the context manager) ends them all, and whatever they spawned
outside their groups (the SuperLink starts its SuperExec in a session of its own).
``run`` returns the same ``RunOutcome`` as a simulation's (``fl_app.launch.runs``).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from fl_app.launch.certs import Certs
from fl_app.launch.flower_cli import (
    FlowerHome,
    flower_bin,
    flower_env,
    flwr_json,
    start_superlink,
)
from fl_app.launch.processes import (
    LOOPBACK,
    ManagedProcess,
    free_port,
    sigterm_as_interrupt,
    uninterruptible,
)
from fl_app.launch.runs import RunOutcome, flwr_run_outcome

APP_DIR = Path(__file__).resolve().parents[2]
CONNECTION = "local"  # name of the SuperLink connection in the private FLWR_HOME


class SuperNodeExited(RuntimeError):
    """A SuperNode stopped while it was expected to connect."""


class Federation:
    """SuperLink + SuperNodes + CLI connection under ``work_dir``; see module doc."""

    def __init__(
        self,
        certs: Certs,
        work_dir: Path,
        *,
        env: Mapping[str, str] | None = None,
        app_dir: Path = APP_DIR,
    ) -> None:
        self.certs = certs
        self.work_dir = work_dir.resolve()
        self.app_dir = app_dir
        self.log_dir = self.work_dir / "logs"
        self.extra_env = dict(env or {})
        self.home = FlowerHome(self.work_dir / "cli")
        self.superlink: ManagedProcess | None = None
        self.supernodes: dict[str, ManagedProcess] = {}
        self.address = ""
        self._runs = 0
        self._signals = ExitStack()

    def __enter__(self) -> Federation:
        """Meanwhile SIGTERM is a KeyboardInterrupt, so it too stops everything."""
        self._signals.enter_context(sigterm_as_interrupt())
        return self

    def __exit__(self, *exc: object) -> None:
        """Stop every process (a second Ctrl-C must not cut that short), then give
        SIGTERM its handler back."""
        with uninterruptible():
            self.stop()
        self._signals.close()

    def start(
        self, num_supernodes: int, connect_timeout: float = 60, *, echo: bool = False
    ) -> None:
        """The SuperLink, then ``num_supernodes`` registered SuperNodes, returned
        once all are online (``echo``: saying so on stdout)."""
        self.start_superlink()
        if echo:
            print(f"SuperLink (TLS, node auth) on {self.address}", flush=True)
        self.start_supernodes(num_supernodes)
        self.wait_for_online(num_supernodes, connect_timeout)
        if echo:
            print(f"{num_supernodes} SuperNodes online", flush=True)

    # ----------------------------------------------------------------- SuperLink
    def start_superlink(self, timeout: float = 30, attempts: int = 3) -> None:
        """TLS, node authentication, state in ``work_dir``; port chosen free.

        A free port can be taken by someone else before the SuperLink binds it (other
        Flower processes on this machine pick random ports too): then try another.
        """
        home = self.work_dir / "superlink"
        home.mkdir(parents=True, exist_ok=True)
        args = [
            "--ssl-ca-certfile",
            str(self.certs.ca_cert.resolve()),
            "--ssl-certfile",
            str(self.certs.superlink_cert.resolve()),
            "--ssl-keyfile",
            str(self.certs.superlink_key.resolve()),
            "--enable-supernode-auth",
            "--database",
            str(home / "state.db"),
        ]
        for attempt in range(1, attempts + 1):
            port = free_port()
            try:
                self.superlink = start_superlink(
                    args,
                    port,
                    self.log_dir / "superlink.log",
                    self._env(home / "flwr-home"),
                    cwd=home,
                    timeout=timeout,
                )
            except RuntimeError:  # exited before listening: the port may be taken
                if attempt == attempts:
                    raise
                continue
            self.address = f"{LOOPBACK}:{port}"
            self.home.add_connection(
                CONNECTION, self.address, root_certificates=self.certs.ca_cert
            )
            return

    # ----------------------------------------------------------------- CLI
    def register(self, public_key: Path) -> int:
        """``flwr supernode register``: allow the node holding the private key in."""
        args = ("supernode", "register", str(public_key), CONNECTION)
        return int(flwr_json(self.home, *args)["node-id"])

    def nodes(self) -> list[dict[str, Any]]:
        """``flwr supernode list``: every registered node and its status."""
        return list(flwr_json(self.home, "supernode", "list", CONNECTION)["nodes"])

    def online(self) -> int:
        return sum(node.get("status") == "online" for node in self.nodes())

    # ----------------------------------------------------------------- SuperNodes
    def start_supernode(
        self,
        name: str,
        node_config: str,
        *,
        private_key: Path | None,
        root_certificates: Path | None,
        extra_args: Sequence[str] = (),
    ) -> ManagedProcess:
        """One ``flower-supernode`` with its own Runtime API port, home and log.

        ``private_key``/``root_certificates`` are parameters so that tests can start
        nodes that lack them and watch the SuperLink refuse them.
        """
        home = self.work_dir / name
        home.mkdir(parents=True, exist_ok=True)
        command = [
            flower_bin("flower-supernode"),
            "--superlink",
            self.address,
            "--node-config",
            node_config,
            "--host",
            LOOPBACK,
            "--port",
            str(free_port()),
        ]
        if root_certificates is not None:
            command += ["--root-certificates", str(root_certificates.resolve())]
        if private_key is not None:
            command += ["--auth-supernode-private-key", str(private_key.resolve())]
        command += list(extra_args)
        process = ManagedProcess.start(
            name,
            command,
            self.log_dir / f"{name}.log",
            env=self._env(home / "flwr-home"),
            cwd=home,
        )
        self.supernodes[name] = process
        return process

    def start_supernodes(self, num: int) -> list[ManagedProcess]:
        """Register node keys 0..num-1, then start node ``i`` with partition ``i``."""
        for i in range(num):
            self.register(self.certs.supernode_public_key(i))
        return [
            self.start_supernode(
                f"supernode-{i}",
                f"partition-id={i} num-partitions={num}",
                private_key=self.certs.supernode_key(i),
                root_certificates=self.certs.ca_cert,
            )
            for i in range(num)
        ]

    def wait_for_online(self, count: int, timeout: float = 60) -> None:
        """Block until the SuperLink lists ``count`` nodes online.

        Fails at once, with the node's last log lines, if a SuperNode exits (e.g.
        because it is not registered or does not trust the SuperLink's certificate).
        """
        deadline = time.monotonic() + timeout
        online = 0
        while time.monotonic() < deadline:
            for process in self.supernodes.values():
                if not process.alive():
                    raise SuperNodeExited(
                        f"{process.name} exited with status {process.popen.returncode}"
                        f" before the federation was up; see {process.log_path}:\n"
                        + process.tail(12)
                    )
            online = self.online()
            if online >= count:
                return
            time.sleep(1)
        raise TimeoutError(
            f"only {online} of {count} SuperNodes online after {timeout:g}s; "
            f"logs in {self.log_dir}"
        )

    def kill_supernode(self, name: str) -> None:
        """SIGKILL a node's whole process group: a crash, as far as Flower can tell."""
        self.supernodes[name].kill()

    # ----------------------------------------------------------------- runs
    def run(
        self,
        run_config: Mapping[str, Any],
        *,
        echo: bool = False,
        timeout: float = 1800,
    ) -> RunOutcome:
        """``flwr run`` the app, stream its log until it ends, read its status and
        find its folder: the same ``RunOutcome`` as a simulation's.

        The nodes here each hold their own partition (``--node-config``), so the
        server asks them (``partition-source = "node"``) unless told otherwise.
        """
        run_config = {"partition-source": "node", **run_config}
        self._runs += 1
        return flwr_run_outcome(
            self.app_dir,
            CONNECTION,
            self.home,
            run_config,
            log_path=self.log_dir / f"run-{self._runs}.log",
            echo=echo,
            timeout=timeout,
        )

    # ----------------------------------------------------------------- shutdown
    def stop(self, grace: float = 10.0) -> None:
        """Stop the SuperNodes (in parallel), then the SuperLink."""
        with ThreadPoolExecutor(max_workers=max(1, len(self.supernodes))) as pool:
            list(pool.map(lambda p: p.stop(grace), self.supernodes.values()))
        if self.superlink is not None:
            self.superlink.stop(grace)

    def _env(self, flwr_home: Path) -> dict[str, str]:
        """Each Flower process installs the app into a FLWR_HOME of its own."""
        return {**flower_env(flwr_home), **self.extra_env}
