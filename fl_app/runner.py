"""Start, drive and stop Flower's own processes: for scripts and integration tests.

``flwr run .`` on its own starts a detached SuperLink under ``~/.flwr`` that outlives
the run and that nothing here could stop by PID. So scripts and tests start the
SuperLink themselves (a ``ManagedProcess``: own process group, log file, stopped on
exit), point the ``flwr`` CLI at it through a private ``FLWR_HOME`` whose
``config.toml`` names the connection, and read the run's outcome with ``flwr list``
rather than trusting the exit code of ``flwr run --stream`` (0 even for a failed run).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from flwr.common.config import parse_config_args

# Quiet, offline, and never install dependencies at run time: the app's environment
# is the one it was installed into.
BASE_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
    "RAY_DEDUP_LOGS": "1",
    "PYTHONUNBUFFERED": "1",
}


def flower_env(flwr_home: Path) -> dict[str, str]:
    """Environment for a Flower process: ``BASE_ENV``, its home, and this venv's
    ``bin`` first on PATH, because Flower starts ``flower-superexec``,
    ``flwr-serverapp`` and ``flwr-clientapp`` by name (the venv need not be active)."""
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])
    return {**BASE_ENV, "FLWR_HOME": str(flwr_home), "PATH": path}


def flower_bin(name: str) -> str:
    """A Flower executable from this interpreter's environment (venv not activated)."""
    beside = Path(sys.executable).with_name(name)
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} not found: install the app with pip first")
    return found


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(
    host: str, port: int, timeout: float, process: ManagedProcess
) -> None:
    """Block until ``host:port`` accepts connections; fail early if ``process`` died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not process.alive():
            raise RuntimeError(
                f"{process.name} exited with code {process.popen.returncode} before "
                f"listening on {host}:{port}; see {process.log_path}:\n"
                + process.tail()
            )
        with socket.socket() as sock:
            sock.settimeout(0.5)
            if sock.connect_ex((host, port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"{process.name} did not listen on {host}:{port} in {timeout}s")


@dataclass
class ManagedProcess:
    """A child process in its own process group, its output in a log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    @classmethod
    def start(
        cls,
        name: str,
        command: Sequence[str],
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> ManagedProcess:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log_file:
            popen = subprocess.Popen(
                list(command),
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **(env or {})},
                cwd=cwd,
                start_new_session=True,  # own group: stop() reaches its children too
            )
        return cls(name, popen, log_path)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, grace: float = 10.0) -> int | None:
        """SIGTERM the whole group, SIGKILL what is left after ``grace`` s, then kill
        any descendant that left the group (the SuperLink starts its SuperExec in a
        session of its own)."""
        escaped = _descendants(self.pid) if self.alive() else set()
        if self.alive():
            _signal_group(self.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
        # Children (ServerApp, ClientApp, Ray) may outlive the leader: kill the group.
        _signal_group(self.pid, signal.SIGKILL)
        try:
            self.popen.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
        for pid, started in escaped:
            if _start_time(pid) == started:  # the same process, not a reused PID
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
        return self.popen.returncode

    def kill(self) -> None:
        """Die now, like a crashed machine: SIGKILL to the group, no clean-up."""
        _signal_group(self.pid, signal.SIGKILL)
        self.popen.wait(timeout=10)


def _start_time(pid: int) -> int | None:
    """Field 22 of /proc/<pid>/stat (start time): tells a process from a reused PID."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(text.rsplit(")", 1)[1].split()[19])


def _descendants(root: int) -> set[tuple[int, int]]:
    """(pid, start time) of every process below ``root`` (Linux /proc; else none)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found: set[tuple[int, int]] = set()
    stack = list(children.get(root, []))
    while stack:
        pid = stack.pop()
        started = _start_time(pid)
        if started is not None:
            found.add((pid, started))
        stack += children.get(pid, [])
    return found


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


@dataclass
class FlowerHome:
    """A private ``FLWR_HOME``: its ``config.toml`` names the SuperLink connections."""

    path: Path
    connections: dict[str, dict[str, Any]] = field(default_factory=dict)

    def add_connection(
        self,
        name: str,
        address: str,
        *,
        root_certificates: Path | None = None,
    ) -> None:
        """Register ``[superlink.<name>]``; TLS iff ``root_certificates`` is given."""
        entry: dict[str, Any] = {"address": address}
        if root_certificates is None:
            entry["insecure"] = True
        else:
            entry["root-certificates"] = str(Path(root_certificates).resolve())
        self.connections[name] = entry
        self._write()

    def _write(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        lines = ["[superlink]", f'default = "{next(iter(self.connections))}"', ""]
        for name, entry in self.connections.items():
            lines += _toml_table(f"superlink.{name}", entry)
        (self.path / "config.toml").write_text("\n".join(lines) + "\n")

    def env(self) -> dict[str, str]:
        return flower_env(self.path)


def _toml_table(name: str, entry: Mapping[str, Any]) -> list[str]:
    lines = [f"[{name}]"]
    nested = []
    for key, value in entry.items():
        if isinstance(value, Mapping):
            nested.append((key, value))
        else:
            lines.append(f"{key} = {_toml_value(value)}")
    lines.append("")
    for key, value in nested:
        lines += _toml_table(f"{name}.{key}", value)
    return lines


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value))


def simulation_config(num_supernodes: int, cpus_per_client: int) -> dict[str, Any]:
    """``--federation-config`` values for Flower's Ray-backed simulation."""
    return {
        "num-supernodes": num_supernodes,
        "client-resources-num-cpus": cpus_per_client,
    }


def start_simulation_superlink(
    home: FlowerHome, port: int, log_dir: Path
) -> ManagedProcess:
    """A SuperLink in simulation mode on ``127.0.0.1:port``, owned by the caller."""
    command = [
        flower_bin("flower-superlink"),
        "--insecure",
        "--simulation",
        "--isolation",
        "subprocess",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--database",
        str(home.path / "state.db"),
        "--disable-runtime-dependency-installation",
    ]
    process = ManagedProcess.start(
        "superlink", command, log_dir / "superlink.log", env=home.env()
    )
    try:
        wait_for_port("127.0.0.1", port, 30, process)
    except BaseException:  # a timeout or Ctrl-C: the caller never gets the process
        process.stop()
        raise
    return process


def config_args(values: Mapping[str, Any]) -> str:
    """``{"lr": 0.1, "dataset": "mnist"}`` as Flower's ``--run-config`` string."""
    parts = []
    for key, value in values.items():
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, str):
            text = json.dumps(value)
        else:
            text = repr(value)
        parts.append(f"{key}={text}")
    return " ".join(parts)


def flwr_run(
    app_dir: Path,
    connection: str,
    home: FlowerHome,
    run_config: Mapping[str, Any],
    *,
    log_path: Path,
    federation_config: Mapping[str, Any] | None = None,
    timeout: float = 1800,
    echo: bool = False,
) -> int:
    """Submit the app, stream its logs until the run ends, return the run id."""
    command = [
        flower_bin("flwr"),
        "run",
        str(app_dir),
        connection,
        "--stream",
        "--run-config",
        config_args(run_config),
    ]
    if federation_config:
        command += ["--federation-config", config_args(federation_config)]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    run_id: int | None = None
    with open(log_path, "a") as log_file:
        process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **home.env()},
            text=True,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        # The loop below only wakes on output: a silent hang needs a timer.
        watchdog = threading.Timer(
            timeout, _signal_group, (process.pid, signal.SIGTERM)
        )
        watchdog.daemon = True
        watchdog.start()
        assert process.stdout is not None
        try:
            for line in process.stdout:
                log_file.write(line)
                log_file.flush()
                if echo:
                    sys.stdout.write(line)
                    sys.stdout.flush()
                if run_id is None and "Successfully started run" in line:
                    run_id = int(line.rsplit(" ", 1)[-1])
                if time.monotonic() > deadline:
                    raise TimeoutError(f"flwr run exceeded {timeout}s; see {log_path}")
        finally:
            watchdog.cancel()
            if process.poll() is None:
                _signal_group(process.pid, signal.SIGTERM)
            process.wait(timeout=30)
    if time.monotonic() > deadline:
        raise TimeoutError(f"flwr run exceeded {timeout}s; see {log_path}")
    if run_id is None:
        raise RuntimeError(f"flwr run did not start a run; see {log_path}")
    return run_id


def parse_run_config(text: str, default_output_dir: Path) -> dict[str, Any]:
    """``--run-config`` overrides (Flower syntax) with ``output-dir`` made absolute:
    the ServerApp runs in the SuperLink's working directory, not the caller's."""
    run_config = parse_config_args([text]) if text else {}
    output_dir = Path(str(run_config.get("output-dir", default_output_dir)))
    run_config["output-dir"] = str(output_dir.expanduser().resolve())
    return run_config


def report_outcome(
    run_id: int, status: str, details: str, output_dir: Path, log_dir: Path
) -> int:
    """Print how a run ended and where its results or logs are; the exit code."""
    print(json.dumps({"run-id": run_id, "status": status}))
    if status == "finished:completed":
        latest = output_dir / "latest"
        print(f"results: {latest.resolve() if latest.exists() else output_dir}")
        return 0
    print(
        f"run {run_id} did not complete: {status} {details}\nlogs in {log_dir}",
        file=sys.stderr,
    )
    return 1


def run_status(connection: str, home: FlowerHome, run_id: int) -> dict[str, Any]:
    """``flwr list --run-id`` as a dict: ``status`` is e.g. ``finished:completed``."""
    out = subprocess.run(
        [
            flower_bin("flwr"),
            "list",
            connection,
            "--run-id",
            str(run_id),
            "--format",
            "json",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, **home.env()},
        timeout=60,
        check=False,
    )
    try:
        payload = json.loads(out.stdout)
    except json.JSONDecodeError as error:
        raise RuntimeError(
            f"flwr list gave no JSON: {out.stdout}{out.stderr}"
        ) from error
    runs = payload.get("runs", [])
    if not runs:
        raise RuntimeError(f"flwr list knows no run {run_id}: {payload}")
    return runs[0]


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt, so ``finally`` blocks stop the processes.

    Only in the main thread (where Python delivers signals); elsewhere a no-op.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def uninterruptible() -> Iterator[None]:
    """Ignore SIGINT and SIGTERM meanwhile: a second Ctrl-C must not cut clean-up short.

    Only in the main thread (where Python delivers signals); elsewhere a no-op.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    stops = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in stops}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
