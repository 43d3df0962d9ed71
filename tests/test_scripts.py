"""What a user meets running the scripts: mistakes named by their flag or file
before anything starts, a failed run's exit code, and Ctrl-C stopping everything the
script started. Each script runs as a user runs it: its own process.

``local_federation.py``'s own federation (SuperLink and SuperNodes over TLS) is not
the one ``test_deployment.py`` shares: that is the point of stopping it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import psutil
import pytest

from fl_app.launch.processes import process_family
from tests.synthetic import TEST_IMAGES, write_mnist_like

REPO = Path(__file__).resolve().parent.parent


def script(name: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "scripts" / name), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "FLWR_TELEMETRY_ENABLED": "0"},
        check=False,
    )


# ------------------------------------------------------------ refused before starting
@pytest.mark.parametrize("name", ["simulate.py", "local_federation.py"])
def test_a_resume_folder_without_a_checkpoint_is_named(
    name: str, tmp_path: Path, make_certs_dir: Path
) -> None:
    folder = tmp_path / "no-such-run"
    extra = ["--certs-dir", str(make_certs_dir)] if name != "simulate.py" else []
    done = script(name, "--resume", str(folder), *extra)
    assert done.returncode == 2, done.stderr
    assert f"--resume {folder}" in done.stderr and "checkpoint.npz" in done.stderr


def test_local_federation_without_certificates_says_how_to_make_them(
    tmp_path: Path,
) -> None:
    done = script("local_federation.py", "--certs-dir", str(tmp_path / "none"))
    assert done.returncode == 2, done.stderr
    assert str(tmp_path / "none") in done.stderr
    assert "scripts/make_certs.py" in done.stderr


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--num-clients", "ten"], "--num-clients"),
        (["--num-clients", "10", "--clients-per-round", "20"], "--clients-per-round"),
        (["--data-dir", "/nonexistent/fmnist"], "--data-dir"),
    ],
)
def test_the_benchmark_names_a_bad_flag(
    args: list[str],
    named: str,
    mnist_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The first case through the script (its wiring), the others in this process
    (a fresh interpreter importing torch costs seconds on a loaded machine)."""
    from fl_app.studies.benchmark import main

    if "--data-dir" not in args:
        args = [*args, "--data-dir", str(mnist_dir)]
    if named == "--num-clients":
        done = script("benchmark.py", *args)
        code, stderr = done.returncode, done.stderr
    else:
        with pytest.raises(SystemExit) as exited:
            main(args)
        code, stderr = exited.value.code, capsys.readouterr().err
    assert code == 2, stderr
    assert named in stderr.splitlines()[-1], stderr


def test_make_certs_says_what_it_wrote_and_refuses_a_contradiction(
    tmp_path: Path,
) -> None:
    """Exit 0 and the files named, 0 and "nothing to do" the second time, 1 with
    the reason when the certificate lacks a requested SAN, 2 for a bad count."""
    out = ["--out-dir", str(tmp_path), "--num-supernodes", "1"]
    done = script("make_certs.py", *out)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"wrote to {tmp_path}: ca.crt, ca.key")
    done = script("make_certs.py", *out)
    assert done.returncode == 0 and done.stdout.startswith("nothing to do"), done
    done = script("make_certs.py", *out, "--san", "superlink.example.org")
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith("make_certs: ") and "--force" in done.stderr
    done = script("make_certs.py", "--out-dir", str(tmp_path), "--num-supernodes=-1")
    assert done.returncode == 2 and "--num-supernodes" in done.stderr, done.stderr


@pytest.fixture(scope="module")
def make_certs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("certs")
    done = script("make_certs.py", "--out-dir", str(directory), "--num-supernodes", "3")
    assert done.returncode == 0, done.stderr
    return directory


# ------------------------------------------------------------------ runs that end badly
@pytest.mark.integration
def test_a_failed_run_exits_1_and_its_log_names_the_damaged_file(
    tmp_path: Path,
) -> None:
    """The test set's images cut short: the run fails (the ServerApp cannot load
    the data it evaluates on), ``simulate.py`` says so and exits 1, and the log
    names the file."""
    data = write_mnist_like(tmp_path / "data")
    damaged = data / f"{TEST_IMAGES}.gz"
    damaged.write_bytes(damaged.read_bytes()[:5000])
    done = script(
        "simulate.py",
        "--num-supernodes",
        "2",
        "--output-dir",
        str(tmp_path / "out"),
        "--run-config",
        f"dataset='mnist' data-dir='{data}' num-server-rounds=1",
        timeout=300,
    )
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr
    assert "did not complete" in done.stderr and "finished:failed" in done.stderr
    log = (tmp_path / "out" / "logs" / "run.log").read_text()
    assert f"{damaged} is truncated" in log, log[-3000:]


@pytest.mark.integration
def test_ctrl_c_stops_everything_simulate_started(tmp_path: Path) -> None:
    data = write_mnist_like(tmp_path / "data")
    with running(
        tmp_path,
        "simulate.py",
        "--num-supernodes",
        "4",
        "--output-dir",
        str(tmp_path / "out"),
        "--run-config",
        f"dataset='mnist' data-dir='{data}' num-server-rounds=100",
    ) as (process, wait_for):
        wait_for("round 1/100")  # the ServerApp, Ray and its actors are up
        started = process_family(process.pid)
        assert len(started) >= 4, [command_of(p) for p in started]
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 130
    assert "interrupted" in (tmp_path / "stderr").read_text()
    assert_all_gone(started)


@pytest.mark.integration
def test_ctrl_c_stops_everything_local_federation_started(
    make_certs_dir: Path, tmp_path: Path
) -> None:
    """``scripts/local_federation.py`` mid-run: Ctrl-C ends it with 130 and takes
    down its SuperLink, SuperNodes, SuperExecs and ClientApp processes."""
    data = write_mnist_like(tmp_path / "data")
    config = f"dataset='mnist' data-dir='{data}' num-server-rounds=50"
    with running(
        tmp_path,
        "local_federation.py",
        "--num-supernodes",
        "2",
        "--certs-dir",
        str(make_certs_dir),
        "--work-dir",
        str(tmp_path / "work"),
        "--run-config",
        f"{config} output-dir='{tmp_path / 'out'}'",
    ) as (process, wait_for):
        wait_for("2 SuperNodes online")
        wait_for("Starting Flower ServerApp")
        started = process_family(process.pid)
        names = " ".join(command_of(p) for p in started)
        assert "flower-superlink" in names and "flower-supernode" in names
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 130
    assert "interrupted" in (tmp_path / "stderr").read_text()
    assert_all_gone(started)


# --------------------------------------------------------------------------- helpers
@contextmanager
def running(
    tmp_path: Path, name: str, *args: str
) -> Iterator[tuple[subprocess.Popen, Callable[[str], None]]]:
    """The script in its own process, its output in ``tmp_path``/stdout and stderr;
    ``wait_for(text)`` blocks until its output shows ``text``. Whatever happens,
    it and all it started are killed at the end."""
    with (
        open(tmp_path / "stdout", "w") as out,
        open(tmp_path / "stderr", "w") as err,
    ):
        process = subprocess.Popen(
            [sys.executable, str(REPO / "scripts" / name), *args],
            stdout=out,
            stderr=err,
            env={**os.environ, "FLWR_TELEMETRY_ENABLED": "0"},
        )

        def wait_for(text: str, timeout: float = 240) -> None:
            deadline = time.monotonic() + timeout
            while text not in (tmp_path / "stdout").read_text():
                assert process.poll() is None, (tmp_path / "stderr").read_text()
                assert time.monotonic() < deadline, f"no {text!r} in {timeout:g}s"
                time.sleep(0.2)

        try:
            yield process, wait_for
        finally:
            victims = process_family(process.pid)
            process.kill()
            for victim in victims:
                with suppress(psutil.Error):
                    victim.kill()
            process.wait()


def command_of(process: psutil.Process) -> str:
    """Its command line, or "" once it has gone (a ClientApp lives one message)."""
    try:
        return " ".join(process.cmdline())
    except psutil.Error:
        return ""


def assert_all_gone(processes: list[psutil.Process], timeout: float = 20) -> None:
    """Every process gone (or a zombie waiting for its reaper) within ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        alive = []
        for process in processes:
            try:
                if process.status() != psutil.STATUS_ZOMBIE:
                    alive.append(f"{process.pid} {command_of(process)[:120]}")
            except psutil.Error:
                pass
        if not alive or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert not alive, "still running:\n" + "\n".join(alive)


def test_the_memory_sampler_walks_page_tables_only_on_a_new_high(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The benchmark's PSS sampler reads the cheap RSS every time and the costly PSS
    only when the RSS reached a new high or ``FULL_EVERY_S`` passed; the peak it
    reports is a real PSS."""
    from fl_app.studies.reference_loop import PssSampler

    walks: list[int] = []
    full_info = psutil.Process.memory_full_info

    def counted(self: psutil.Process) -> object:
        walks.append(self.pid)
        return full_info(self)

    monkeypatch.setattr(psutil.Process, "memory_full_info", counted)
    # This process alone (a test worker may have children of other tests').
    monkeypatch.setattr(psutil.Process, "children", lambda self, recursive: [])
    sampler = PssSampler(include_self=True)
    sampler.FULL_EVERY_S = 3600.0
    sampler.sample()
    assert len(walks) == 1 and sampler.peak > 0
    pss = sampler.peak
    sampler.sample()  # the same RSS: no walk
    assert len(walks) == 1
    grown = bytearray(256 * 2**20)  # well over 1% of this process: a new high
    grown[::4096] = b"x" * len(grown[::4096])
    sampler.sample()
    assert len(walks) == 2 and sampler.peak > pss
    sampler.FULL_EVERY_S = 0.0
    sampler.sample()  # time's up: a walk even without a new high
    assert len(walks) == 3
    del grown
