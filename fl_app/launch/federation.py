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

import contextlib
import sys
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil

from fl_app.launch.certs import Certs
from fl_app.launch.flower_cli import (
    Echo,
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
    process_family,
)
from fl_app.launch.runs import APP_DIR, RunOutcome, SuperLinkOwner


class Federation(SuperLinkOwner):
    """SuperLink + SuperNodes + CLI connection under ``work_dir``; see module doc."""

    connection = "local"

    def __init__(
        self,
        certs: Certs,
        work_dir: Path,
        *,
        env: Mapping[str, str] | None = None,
        app_dir: Path = APP_DIR,
        warm: bool = True,
    ) -> None:
        """``warm``: each SuperNode's ClientApps run in warm workers
        (``fl_app.launch.warm_executor``), else in Flower's stock executor (a fresh
        process a message)."""
        super().__init__(app_dir)
        self.warm = warm
        #: Each SuperNode's warm executor, by the node's name (``warm`` only).
        self.executors: dict[str, ManagedProcess] = {}
        self.certs = certs
        self.work_dir = work_dir.resolve()
        self.log_dir = self.work_dir / "logs"
        self.extra_env = dict(env or {})
        self.home = FlowerHome(self.work_dir / "cli")
        self.superlink: ManagedProcess | None = None
        self.supernodes: dict[str, ManagedProcess] = {}
        self.address = ""
        self._runs = 0
        self._superlink_start: tuple[Any, ...] = ()

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
        args = ["--ssl-ca-certfile", str(self.certs.ca_cert.resolve())]
        args += ["--ssl-certfile", str(self.certs.superlink_cert.resolve())]
        args += ["--ssl-keyfile", str(self.certs.superlink_key.resolve())]
        args += ["--enable-supernode-auth", "--database", str(home / "state.db")]
        log_path, env = self.log_dir / "superlink.log", self._env(home / "flwr-home")
        self._superlink_start = (args, log_path, env, home)
        for attempt in range(1, attempts + 1):
            port = free_port()
            try:
                self.superlink = start_superlink(
                    args, port, log_path, env, cwd=home, timeout=timeout
                )
            except RuntimeError:  # exited before listening: the port may be taken
                if attempt == attempts:
                    raise
                continue
            self.address = f"{LOOPBACK}:{port}"
            self.home.add_connection(
                self.connection, self.address, root_certificates=self.certs.ca_cert
            )
            return

    def crash_superlink(self) -> None:
        """SIGKILL the SuperLink and all it started (its SuperExec and ServerApp, in
        sessions of their own): the SuperLink's host crashed."""
        assert self.superlink is not None
        family = process_family(self.superlink.pid)
        self.superlink.kill()
        for process in family:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()

    def restart_superlink(self, timeout: float = 30) -> None:
        """The SuperLink again, on the same port and database (``--database``): its
        registered nodes, runs and their state survive; the SuperNodes reconnect
        by themselves."""
        args, log_path, env, home = self._superlink_start
        port = int(self.address.rsplit(":", 1)[1])
        self.superlink = start_superlink(
            args, port, log_path, env, cwd=home, timeout=timeout
        )

    # ----------------------------------------------------------------- CLI
    def register(self, public_key: Path) -> int:
        """``flwr supernode register``: allow the node holding the private key in."""
        args = ("supernode", "register", str(public_key), self.connection)
        return int(flwr_json(self.home, *args)["node-id"])

    def online(self) -> int:
        """How many registered nodes ``flwr supernode list`` shows online."""
        nodes = flwr_json(self.home, "supernode", "list", self.connection)["nodes"]
        return sum(node.get("status") == "online" for node in nodes)

    # ----------------------------------------------------------------- SuperNodes
    def start_supernode(
        self,
        name: str,
        node_config: str,
        *,
        private_key: Path | None,
        root_certificates: Path | None,
    ) -> ManagedProcess:
        """One ``flower-supernode`` with its own Runtime API port, home and log.

        ``private_key``/``root_certificates`` are parameters so that tests can start
        nodes that lack them and watch the SuperLink refuse them.
        """
        home = self.work_dir / name
        home.mkdir(parents=True, exist_ok=True)
        runtime_api = f"{LOOPBACK}:{free_port()}"
        command = [flower_bin("flower-supernode"), "--superlink", self.address]
        command += ["--node-config", node_config, "--host", LOOPBACK]
        command += ["--port", runtime_api.rsplit(":", 1)[1]]
        if self.warm:  # the node's executor is ours, started next to it
            command += ["--isolation", "process"]
        if root_certificates is not None:
            command += ["--root-certificates", str(root_certificates.resolve())]
        if private_key is not None:
            command += ["--auth-supernode-private-key", str(private_key.resolve())]
        log_path, env = self.log_dir / f"{name}.log", self._env(home / "flwr-home")
        process = ManagedProcess.start(name, command, log_path, env=env, cwd=home)
        self.supernodes[name] = process
        if self.warm:
            executor = [sys.executable, "-m", "fl_app.launch.warm_executor"]
            executor += ["--runtime-api-address", runtime_api, "--insecure"]
            executor += ["--parent-pid", str(process.popen.pid), "--preload", "torch"]
            self.executors[name] = ManagedProcess.start(
                f"{name}-executor",
                executor,
                self.log_dir / f"{name}-executor.log",
                env=env,
                cwd=home,
            )
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
                    raise RuntimeError(
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
        """SIGKILL a node's whole process group, and its warm executor's: a crash,
        as far as Flower can tell."""
        self.supernodes[name].kill()
        if name in self.executors:
            self.executors[name].kill()

    # ----------------------------------------------------------------- runs
    def run(
        self,
        run_config: Mapping[str, Any],
        *,
        echo: Echo = False,
        timeout: float = 1800,
    ) -> RunOutcome:
        """``flwr run`` the app, stream its log until it ends, read its status and
        find its folder: the same ``RunOutcome`` as a simulation's.

        The nodes here each hold their own partition (``--node-config``), so the
        server asks them (``partition-source = "node"``) unless told otherwise.
        """
        run_config = {"partition-source": "node", **run_config}
        self._runs += 1
        log_path = self.log_dir / f"run-{self._runs}.log"
        return self._run(
            self.home, run_config, log_path=log_path, timeout=timeout, echo=echo
        )

    # ----------------------------------------------------------------- shutdown
    def stop(self, grace: float = 10.0) -> None:
        """Stop the SuperNodes (in parallel), then the SuperLink."""
        nodes = [*self.supernodes.values(), *self.executors.values()]
        with ThreadPoolExecutor(max_workers=max(1, len(nodes))) as pool:
            list(pool.map(lambda p: p.stop(grace), nodes))
        if self.superlink is not None:
            self.superlink.stop(grace)

    def _env(self, flwr_home: Path) -> dict[str, str]:
        """Each Flower process installs the app into a FLWR_HOME of its own."""
        return {**flower_env(flwr_home), **self.extra_env}
