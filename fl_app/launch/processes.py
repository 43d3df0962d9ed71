"""Child processes that are stopped for sure: ports, process groups, signals.

Flower's processes start processes of their own, some outside their process group
(the SuperLink starts its SuperExec in a session of its own; Ray workers outlive
their raylet), so stopping the one started is not enough. ``ManagedProcess`` runs a
child in its own process group with its output in a log file and stops the group
and every descendant; ``process_family`` is that walk, for tests that check nothing
is left. The signal helpers turn SIGTERM into the KeyboardInterrupt that unwinds
``finally`` blocks, and keep a second Ctrl-C from cutting the clean-up short.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
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
        with suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.2)
    raise TimeoutError(f"{process.name} did not listen on {host}:{port} in {timeout}s")


@dataclass
class ManagedProcess:
    """A child process in its own process group, its output in a log file (or, with
    ``pipe``, in ``popen.stdout`` for the caller to copy there)."""

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
        *,
        pipe: bool = False,
    ) -> ManagedProcess:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log_file:
            popen = subprocess.Popen(
                list(command),
                stdout=subprocess.PIPE if pipe else log_file,
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
        """The log's last lines, for an error message that saves opening it."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, grace: float = 10.0) -> int | None:
        """SIGTERM the process group and every descendant, SIGKILL what is left after
        ``grace`` s. Descendants are signalled one by one too because some leave the
        group (the SuperLink starts its SuperExec in a session of its own); psutil
        checks each one's start time, so a reused PID is never signalled."""
        family = process_family(self.pid) if self.alive() else []
        for sig in (signal.SIGTERM, signal.SIGKILL):
            # Group members (ServerApp, ClientApps, Ray) may outlive the leader.
            _signal_group(self.pid, sig)
            for process in family:
                with suppress(psutil.Error):
                    process.send_signal(sig)
            deadline = time.monotonic() + grace
            with suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=grace)  # the leader: reaped, exit code kept
            remaining = max(0.0, deadline - time.monotonic())
            _, family = psutil.wait_procs(family, timeout=remaining)
        return self.popen.returncode

    def kill(self) -> None:
        """Die now, like a crashed machine: SIGKILL to the group, no clean-up."""
        _signal_group(self.pid, signal.SIGKILL)
        self.popen.wait(timeout=10)


def process_family(pid: int) -> list[psutil.Process]:
    """``pid``'s descendants, and the other members of their process groups: Ray
    workers whose raylet has exited are orphans, but still in the group of the
    SuperExec that started them. Neither ``pid`` nor the caller is listed."""
    try:
        found = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []
    groups = {pid, *(_pgid(process.pid) for process in found)} - {None}
    found += [p for p in psutil.process_iter() if _pgid(p.pid) in groups]
    ours = (pid, os.getpid())
    return list({p.pid: p for p in found if p.pid not in ours}.values())


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


@contextmanager
def _handling(handler: Any, *signals: signal.Signals) -> Iterator[None]:
    """``handler`` for ``signals`` meanwhile. Only in the main thread (where Python
    delivers signals); elsewhere a no-op."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, handler) for sig in signals}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def sigterm_as_interrupt() -> AbstractContextManager[None]:
    """Turn SIGTERM into KeyboardInterrupt, so ``finally`` blocks stop the processes."""
    return _handling(_interrupt, signal.SIGTERM)


def uninterruptible() -> AbstractContextManager[None]:
    """Ignore SIGINT and SIGTERM meanwhile: a second Ctrl-C must not cut clean-up
    short."""
    return _handling(signal.SIG_IGN, signal.SIGINT, signal.SIGTERM)
