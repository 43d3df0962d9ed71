"""Flower's own programs, driven from Python: SuperLink, ``flwr run``, ``flwr list``.

``flwr run .`` on its own starts a detached SuperLink under ``~/.flwr`` that outlives
the run and that nothing here could stop by PID. So scripts and tests start the
SuperLink themselves (a ``ManagedProcess``: own process group, log file, stopped on
exit), point the ``flwr`` CLI at it through a private ``FLWR_HOME`` whose
``config.toml`` names the connection (``FlowerHome``), and read the run's outcome
with ``flwr list`` (``run_status``) rather than trusting the exit code of
``flwr run --stream`` (0 even for a failed run).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pathspec
import tomli_w

from fl_app.launch.processes import LOOPBACK, ManagedProcess, wait_for_port

#: Where ``flwr run``'s streamed lines go besides its log: stdout (True), nowhere
#: (False), or a function given each line.
Echo = bool | Callable[[str], None]

# Quiet, offline, and never install dependencies at run time: the app's environment
# is the one it was installed into.
BASE_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
    "RAY_DEDUP_LOGS": "1",
    "PYTHONUNBUFFERED": "1",
    # The SuperExec (which starts the simulation, and a SuperNode's ClientApp
    # processes) looks for new work every second by default; 0.1 s costs nothing.
    "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.1",
}


def flower_env(flwr_home: Path) -> dict[str, str]:
    """Environment for a Flower process: ``BASE_ENV``, its home, and this venv's
    ``bin`` first on PATH, because Flower starts ``flower-superexec``,
    ``flwr-serverapp`` and ``flwr-clientapp`` by name (the venv need not be active)."""
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])
    return {**BASE_ENV, "FLWR_HOME": str(flwr_home), "PATH": path}


def flower_bin(name: str) -> str:
    """A Flower executable, this interpreter's environment first (venv not activated):
    looked up on the PATH ``flower_env`` gives Flower's processes."""
    found = shutil.which(name, path=flower_env(Path())["PATH"])
    if found is None:
        raise FileNotFoundError(f"{name} not found: install the app with pip first")
    return found


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
        superlink = {"default": next(iter(self.connections)), **self.connections}
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / "config.toml").write_text(tomli_w.dumps({"superlink": superlink}))

    def env(self) -> dict[str, str]:
        return flower_env(self.path)


def start_superlink(
    args: Sequence[str],
    port: int,
    log_path: Path,
    env: Mapping[str, str],
    *,
    cwd: Path | None = None,
    timeout: float = 30,
) -> ManagedProcess:
    """``flower-superlink <args>`` on ``127.0.0.1:port``, returned once it listens;
    stopped again if it does not (exits, times out, or Ctrl-C meanwhile)."""
    command = [flower_bin("flower-superlink"), *args, "--host", LOOPBACK]
    command += ["--port", str(port), "--disable-runtime-dependency-installation"]
    process = ManagedProcess.start("superlink", command, log_path, env=env, cwd=cwd)
    try:
        wait_for_port(LOOPBACK, port, timeout, process)
    except BaseException:  # the caller never gets the process: stop it here
        process.stop()
        raise
    return process


def simulation_config(num_supernodes: int, cpus_per_client: int) -> dict[str, Any]:
    """``--federation-config`` values for Flower's Ray-backed simulation.

    Never ``init-args-num-cpus``/``-num-gpus``: Ray refuses them when the simulation
    joins a running cluster (``SimulationSuperLink(ray_address=...)``), whose nodes'
    own ``--num-cpus`` decide; a local Ray counts this machine's cores itself."""
    return {
        "num-supernodes": num_supernodes,
        "client-resources-num-cpus": cpus_per_client,
    }


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


def flwr_json(home: FlowerHome, *args: str, timeout: float = 60) -> dict[str, Any]:
    """``flwr <args> --format json`` against ``home``'s SuperLinks, or RuntimeError
    with Flower's own message.

    Flower's JSON mode reports some failures as ``"success": false`` with exit code
    0, others as text with a non-zero exit code: both end up here.
    """
    try:
        out = subprocess.run(
            [flower_bin("flwr"), *args, "--format", "json"],
            capture_output=True,
            text=True,
            env={**os.environ, **home.env()},
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise TimeoutError(f"flwr {' '.join(args)} took over {timeout:g}s") from None
    try:
        payload = json.loads(out.stdout)
    except json.JSONDecodeError:
        payload = {"error-message": (out.stdout + out.stderr).strip()}
    if out.returncode != 0 or not payload.get("success", False):
        message = str(payload.get("error-message", payload)).strip()
        raise RuntimeError(
            f"flwr {' '.join(args)} failed (exit {out.returncode}): {message}"
        )
    return dict(payload)


def flwr_run(
    app_dir: Path,
    connection: str,
    home: FlowerHome,
    run_config: Mapping[str, Any],
    *,
    log_path: Path,
    federation_config: Mapping[str, Any] | None = None,
    timeout: float = 1800,
    echo: Echo = False,
) -> int:
    """Submit the app, stream its logs until the run ends, return the run id.

    ``echo``: each line of the stream goes to stdout (True) or to this function
    (a progress display, ``fl_app.launch.progress``); always to ``log_path``.

    After ``timeout`` s the CLI is stopped and TimeoutError raised (by a timer: the
    reading loop only wakes on output, and a hung CLI may print nothing).
    """
    with staged_app(app_dir) as staged:
        command = [flower_bin("flwr"), "run", str(staged), connection, "--stream"]
        command += ["--run-config", config_args(run_config)]
        if federation_config:
            command += ["--federation-config", config_args(federation_config)]
        process = ManagedProcess.start(
            "flwr run", command, log_path, env=home.env(), pipe=True
        )
        expired = threading.Event()

        def expire() -> None:
            expired.set()
            process.stop()

        timer = threading.Timer(timeout, expire)
        timer.daemon = True
        timer.start()
        run_id: int | None = None
        assert process.popen.stdout is not None
        try:
            with open(log_path, "ab") as log_file:
                for raw in process.popen.stdout:
                    log_file.write(raw)
                    log_file.flush()
                    line = raw.decode(errors="replace")
                    if callable(echo):
                        echo(line)
                    elif echo:
                        sys.stdout.write(line)
                        sys.stdout.flush()
                    if run_id is None and "Successfully started run" in line:
                        run_id = int(line.rsplit(" ", 1)[-1])
        finally:
            timer.cancel()
            timer.join()  # a stop() the timer began ends before ours
            process.stop()
        if expired.is_set():
            raise TimeoutError(f"flwr run exceeded {timeout:g}s; see {log_path}")
        if run_id is None:
            raise RuntimeError(f"flwr run did not start a run; see {log_path}")
        return run_id


@contextmanager
def staged_app(app_dir: Path) -> Iterator[Path]:
    """A temporary copy of ``app_dir`` without what its ``.gitignore`` ignores.

    ``flwr run <dir>`` lists every file under ``dir`` before it filters them by the
    ``.gitignore``: with a ``.venv`` inside (46,000 files here) that is 3.5 of the
    4.5 s before the SuperLink gets the run. Ignored folders are skipped here without
    being entered, so Flower walks a hundred files and packs the same app.
    """
    app_dir = app_dir.resolve()
    gitignore = app_dir / ".gitignore"
    lines = gitignore.read_text().splitlines() if gitignore.is_file() else []
    ignored = pathspec.GitIgnoreSpec.from_lines([*lines, ".git/"])
    with tempfile.TemporaryDirectory(prefix="fl-app-fab-") as tmp:
        staged = Path(tmp) / app_dir.name
        for folder, subfolders, files in os.walk(app_dir):
            here = Path(folder).relative_to(app_dir)
            subfolders[:] = [
                d for d in subfolders if not ignored.match_file(f"{here / d}/")
            ]
            for name in files:
                source = Path(folder) / name
                if source.is_symlink() or ignored.match_file(str(here / name)):
                    continue
                (staged / here).mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, staged / here / name)
        yield staged


def run_status(connection: str, home: FlowerHome, run_id: int) -> dict[str, Any]:
    """``flwr list --run-id`` as a dict: ``status`` is e.g. ``finished:completed``."""
    payload = flwr_json(home, "list", connection, "--run-id", str(run_id))
    runs = payload.get("runs", [])
    if not runs:
        raise RuntimeError(f"flwr list knows no run {run_id}: {payload}")
    return dict(runs[0])
