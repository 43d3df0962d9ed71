"""A real Flower deployment on one machine: for scripts/local_federation.py and tests.

One SuperLink with TLS and SuperNode authentication, SuperNodes that each hold one
partition and authenticate with a registered key, and the ``flwr`` CLI pointed at the
SuperLink through a private ``FLWR_HOME``: the same processes and commands as on real
hosts, only on loopback. Every process is a ``ManagedProcess`` of the ``Federation``
(own process group, own log file), and ``stop()`` (also reached on error and Ctrl-C
through the context manager) ends them all, and whatever they spawned outside their
groups (the SuperLink starts its SuperExec in a session of its own).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fl_app.launch.runner import (
    LOOPBACK,
    FlowerHome,
    ManagedProcess,
    flower_bin,
    flower_env,
    flwr_json,
    flwr_run,
    free_port,
    run_status,
    start_superlink,
)

APP_DIR = Path(__file__).resolve().parents[2]
CONNECTION = "local"  # name of the SuperLink connection in the private FLWR_HOME


@dataclass(frozen=True)
class Certs:
    """The files scripts/make_certs.py writes, by role."""

    directory: Path

    @property
    def ca_cert(self) -> Path:
        return self.directory / "ca.crt"

    @property
    def superlink_cert(self) -> Path:
        return self.directory / "superlink.crt"

    @property
    def superlink_key(self) -> Path:
        return self.directory / "superlink.key"

    def supernode_key(self, index: int) -> Path:
        return self.directory / f"supernode-{index}"

    def supernode_public_key(self, index: int) -> Path:
        return self.directory / f"supernode-{index}.pub"

    def check(self, num_supernodes: int) -> None:
        """Fail before starting anything if a file is missing, saying how to fix it."""
        needed = [self.ca_cert, self.superlink_cert, self.superlink_key]
        for i in range(num_supernodes):
            needed += [self.supernode_key(i), self.supernode_public_key(i)]
        missing = [p.name for p in needed if not p.is_file()]
        if missing:
            raise FileNotFoundError(
                f"{self.directory} lacks {', '.join(missing)}; create them with: "
                f"python scripts/make_certs.py --out-dir {self.directory} "
                f"--num-supernodes {num_supernodes}"
            )


@dataclass(frozen=True)
class RunResult:
    """What ``flwr list`` says about a finished run, and where its log is."""

    run_id: int
    status: str  # e.g. "finished:completed", "finished:failed"
    details: str  # Flower's status details: the ServerApp's error, if any
    log_path: Path

    @property
    def completed(self) -> bool:
        return self.status == "finished:completed"


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

    def __enter__(self) -> Federation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

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
    ) -> RunResult:
        """``flwr run`` the app, stream its log until it ends, read its status.

        The nodes here each hold their own partition (``--node-config``), so the
        server asks them (``partition-source = "node"``) unless told otherwise.
        """
        run_config = {"partition-source": "node", **run_config}
        self._runs += 1
        log_path = self.log_dir / f"run-{self._runs}.log"
        run_id = flwr_run(
            self.app_dir,
            CONNECTION,
            self.home,
            run_config,
            log_path=log_path,
            echo=echo,
            timeout=timeout,
        )
        status = run_status(CONNECTION, self.home, run_id)
        return RunResult(
            run_id,
            str(status.get("status", "")),
            str(status.get("status-details", "")),
            log_path,
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
