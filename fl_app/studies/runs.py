"""A study's runs, kept so that no finished run is ever run twice.

``RunStore`` keeps the runs: a finished one is ``<out>/runs/<name>/`` (the run
folder, its logs, and a ``study-run.json`` marker with its configuration, written
last), reused by the next invocation; another configuration under that name is
refused. A run goes first to ``runs/.incomplete/<name>/``, and one interrupted
after a round continues from its checkpoint. An flock keeps two studies out of one
``<out>``. Runs go through ``SimulationSuperLink.run`` or an injected ``Runner``; a
``StudyProgress`` shows them, if given (a line per run otherwise).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, TextIO

from fl_app.checkpoint import CHECKPOINT_FILE
from fl_app.data import cache_dir
from fl_app.files import write_json
from fl_app.launch.flower_cli import Echo
from fl_app.launch.progress import StudyProgress
from fl_app.launch.simulation import SimulationSuperLink
from fl_app.results import read_history
from fl_app.studies.report import RunResult, percent

RUNS = "runs"
INCOMPLETE = ".incomplete"
MARKER = "study-run.json"  # written last: its presence means the run finished

#: Runs the app once: (run config with an absolute ``output-dir``, number of virtual
#: clients, folder for its logs) -> the run folder the ServerApp wrote. Flower's
#: unless one is injected (the tests inject a fake).
Runner = Callable[[dict[str, Any], int, Path], Path]


class StudyError(RuntimeError):
    """A run did not complete, or ``<out>`` holds results of another study."""


class RunStore(ExitStack):
    """The runs of one study, kept under ``<out_dir>/runs/``; one SuperLink. Use
    as a context manager. ``runner`` replaces Flower (no SuperLink then); ``total``
    is for the ``[i/total]`` progress; ``run_options`` go to
    ``SimulationSuperLink.run`` (``cpus_per_client``, ``timeout``, ``echo``).
    ``progress`` shows the runs instead of those lines, and gives each run its
    ``echo`` (its own count and total then)."""

    def __init__(
        self,
        out_dir: Path,
        *,
        total: int | None = None,
        runner: Runner | None = None,
        stream: TextIO | None = None,
        progress: StudyProgress | None = None,
        **run_options: Any,
    ) -> None:
        super().__init__()
        self.out_dir = Path(out_dir).expanduser().resolve()
        self.runs_dir = self.out_dir / RUNS
        self.total = total
        self.stream = stream
        self.progress = progress
        self.results: dict[str, RunResult] = {}
        self._runner = runner
        self._run_options = run_options
        self._superlink: SimulationSuperLink | None = None
        self._open = False
        self._count = 0

    def __enter__(self) -> RunStore:
        try:
            self.runs_dir.mkdir(parents=True, exist_ok=True)
            self.enter_context(_exclusive_lock(self.out_dir / ".study.lock"))
            if self._runner is None:  # it starts nothing before the first run
                link = SimulationSuperLink(self.out_dir / "logs")
                self._superlink = self.enter_context(link)
        except BaseException:
            self.close()
            raise
        self._open = True
        self.callback(setattr, self, "_open", False)
        return self

    def run(
        self,
        name: str,
        run_config: dict[str, Any],
        num_supernodes: int,
        *,
        label: str | None = None,
    ) -> list[dict[str, Any]]:
        """Run the app once (or reuse ``runs/<name>/`` if it finished before) and
        return its history rows; prints one progress line."""
        _check_name(name)
        if not self._open:
            raise RuntimeError("use RunStore as a context manager: with RunStore(...)")
        self._count += 1
        label = label or name
        settings = {k: v for k, v in run_config.items() if k != "output-dir"}
        wanted = {"run_config": settings, "num_supernodes": num_supernodes}
        wanted = json.loads(json.dumps(wanted, default=str))  # as the marker has it
        final = self.runs_dir / name
        if (final / MARKER).exists():
            marker = json.loads((final / MARKER).read_text())
            found = {k: marker.get(k) for k in wanted}
            if found != wanted:
                raise StudyError(
                    f"{final} holds a finished run of another configuration "
                    f"({_difference(found, wanted)}); choose another --out, or "
                    "delete that folder to run it again"
                )
            result = self._result(name, label, final, marker["seconds"], True)
        elif final.exists():
            raise StudyError(
                f"{final} exists but holds no finished run (no {MARKER}); delete it"
            )
        else:
            result = self._run_now(name, label, run_config, num_supernodes, wanted)
        self.results[name] = result
        self._progress(result)
        return result.rows

    def _run_now(
        self,
        name: str,
        label: str,
        run_config: dict[str, Any],
        num_supernodes: int,
        wanted: dict[str, Any],
    ) -> RunResult:
        staging = self.runs_dir / INCOMPLETE / name
        config = {**run_config, "output-dir": str(staging)}
        earlier = _resumable(staging)
        if earlier is not None:  # an interrupted try got that far: continue it
            config.update({"resume": True, "resume-dir": str(earlier)})
            self._say(f"{label}: resuming {earlier} from its checkpoint")
        else:
            shutil.rmtree(staging, ignore_errors=True)  # a try without a round
            staging.mkdir(parents=True)
        log_dir = staging / "logs"
        echo = self.progress.start(label) if self.progress is not None else None
        started = time.monotonic()
        if self._runner is not None:
            run_dir = Path(self._runner(config, num_supernodes, log_dir))
        else:
            run_dir = self._flower_runner(config, num_supernodes, log_dir, echo)
        seconds = time.monotonic() - started
        if not read_history(run_dir):
            raise StudyError(f"run {name!r} left an empty history in {run_dir}")
        if log_dir.exists():
            shutil.move(log_dir, run_dir / "logs")
        (run_dir.parent / "latest").unlink(missing_ok=True)
        write_json(
            run_dir / MARKER,
            {
                **wanted,
                "name": name,
                "seconds": seconds,
                "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
                "run_folder": run_dir.name,
            },
        )
        # A finished study run is never resumed: its clients' state (SCAFFOLD's
        # c_i, error-feedback residuals, ~1.6 MB a client) can go.
        shutil.rmtree(cache_dir() / "client-state" / run_dir.name, ignore_errors=True)
        os.replace(run_dir, self.runs_dir / name)  # same filesystem: atomic
        shutil.rmtree(staging, ignore_errors=True)
        with contextlib.suppress(OSError):
            staging.parent.rmdir()  # .incomplete/, once empty
        return self._result(name, label, self.runs_dir / name, seconds, False)

    def _flower_runner(
        self,
        run_config: dict[str, Any],
        num_supernodes: int,
        log_dir: Path,
        echo: Echo | None = None,
    ) -> Path:
        """Run the app through ``flwr run`` on the study's SuperLink (its lines to
        ``echo``, else the store's); the run folder, or a StudyError saying how
        it ended."""
        assert self._superlink is not None
        options = (
            self._run_options if echo is None else {**self._run_options, "echo": echo}
        )
        outcome = self._superlink.run(
            run_config,
            num_supernodes=num_supernodes,
            log_path=log_dir / "run.log",
            **options,
        )
        if outcome.completed and outcome.run_dir is not None:
            return outcome.run_dir
        ended = f"ended {outcome.status} {outcome.details}"
        if outcome.run_dir is None and outcome.status == "finished:completed":
            ended = (
                f"completed but left no single run folder in {run_config['output-dir']}"
            )
        raise StudyError(
            f"run {outcome.run_id} {ended}; log {outcome.log_path}, ends with:\n"
            f"{_tail(outcome.log_path)}"
        )

    def _result(
        self, name: str, label: str, run_dir: Path, seconds: float, skipped: bool
    ) -> RunResult:
        config_path = run_dir / "config.json"
        config = json.loads(config_path.read_text()) if config_path.exists() else {}
        return RunResult(
            name, label, read_history(run_dir), seconds, skipped, run_dir, config
        )

    def _progress(self, result: RunResult) -> None:
        last = result.rows[-1]
        if self.progress is not None:
            if result.skipped:
                self.progress.skipped(result.label)
            else:
                summary = (
                    f"{percent(last['test_accuracy'])} after {last['round']} rounds"
                )
                self.progress.finished(result.label, summary, result.seconds)
            return
        count = f"{self._count}/{self.total}" if self.total else str(self._count)
        took = f"{result.seconds:.0f} s"
        if result.skipped:
            took += ", finished before: skipped"
        self._say(
            f"[{count}] {result.label}: {percent(last['test_accuracy'])} after "
            f"{last['round']} rounds ({took})"
        )

    def _say(self, line: str) -> None:
        if self.progress is not None:
            self.progress.message(line)
        else:
            print(line, file=self.stream or sys.stdout, flush=True)


def _resumable(staging: Path) -> Path | None:
    """The run folder an interrupted try left in ``staging`` with a checkpoint (it
    completed a round at least), or None."""
    if not staging.is_dir():
        return None
    found = [
        p
        for p in staging.iterdir()
        if p.is_dir() and not p.is_symlink() and (p / CHECKPOINT_FILE).is_file()
    ]
    return found[0] if len(found) == 1 else None


@contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    """An flock on ``path`` meanwhile: two studies must not share an ``<out>``
    folder (they would run the same configurations twice)."""
    with open(path, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StudyError(
                f"another study is using {path.parent}; wait for it or choose "
                "another --out"
            ) from None
        yield  # closing the file releases the lock


def _check_name(name: str) -> None:
    if not name or name.startswith(".") or "/" in name or name != name.strip():
        raise ValueError(f"run name {name!r}: must be a plain folder name")


def _difference(found: dict[str, Any], wanted: dict[str, Any]) -> str:
    """What differs between two markers, ``key: old there, new now``."""
    old, new = _flatten(found), _flatten(wanted)
    return ", ".join(
        f"{k}: {old.get(k, '-')!r} there, {new.get(k, '-')!r} now"
        for k in sorted(set(old) | set(new))
        if old.get(k) != new.get(k)
    )


def _flatten(value: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Keys joined with dots (flwr's ``flatten_dict`` refuses None and lists)."""
    flat: dict[str, Any] = {}
    for key, item in value.items():
        if isinstance(item, Mapping):
            flat.update(_flatten(item, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = item
    return flat


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
