"""What the study scripts share: many runs of the app on one SuperLink, resumable.

``Study`` starts one simulation SuperLink (private ``FLWR_HOME`` in a temporary
folder, free port) for a whole study, when the first run needs it, and stops it at
the end, on an error, on Ctrl-C and on SIGTERM.
``study.run(name, run_config, num_supernodes)`` runs the app once through
``flwr run``, checks that Flower reports it ``finished:completed`` and returns its
history rows. Each finished run is kept as ``<out>/runs/<name>/`` (the run
folder the ServerApp wrote, with its logs and a ``study-run.json`` that records the
configuration), so running a study again skips every configuration already finished:
an interrupted study loses at most the run in progress.

A run first goes to ``<out>/runs/.incomplete/<name>/`` and is renamed to
``<out>/runs/<name>/`` only once it has completed, so a folder under ``runs/`` is
always a finished run. Reusing ``<out>`` with another configuration under the same
name is refused rather than silently mixed.

Also here: the pure helpers the reports need (``rounds_to_target``,
``markdown_table``, ``plot_curves``) and the command-line options the studies share.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import io
import json
import math
import os
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO

from fl_app.checkpoint import CHECKPOINT_FILE
from fl_app.config import DATASETS
from fl_app.data import cache_dir
from fl_app.files import write_atomically, write_json
from fl_app.launch.runner import (
    FlowerHome,
    flwr_run,
    free_port,
    run_status,
    sigterm_as_interrupt,
    simulation_config,
    start_simulation_superlink,
    uninterruptible,
)
from fl_app.results import read_history

APP_DIR = Path(__file__).resolve().parents[2]
RUNS = "runs"
INCOMPLETE = ".incomplete"
MARKER = "study-run.json"  # written last: its presence means the run finished
CONNECTION = "study"
DEFAULT_DATA_DIRS = {"fashion-mnist": "/usr/share/datasets/fashion-mnist"}

Rows = list[dict[str, Any]]
#: Runs the app once: (run config with an absolute ``output-dir``, number of virtual
#: clients, folder for its logs) -> the run folder the ServerApp wrote. ``Study``
#: uses Flower's unless one is injected (the tests inject a fake).
Runner = Callable[[dict[str, Any], int, Path], Path]


class StudyError(RuntimeError):
    """A run did not complete, or ``<out>`` holds results of another study."""


@dataclass
class RunResult:
    """A finished run: its history rows and how long it took."""

    name: str
    label: str
    rows: Rows
    seconds: float
    skipped: bool  # finished by an earlier invocation
    run_dir: Path
    config: dict[str, Any]  # the run's full configuration (the ServerApp's config.json)


class Study:
    """One SuperLink for many runs; finished runs kept under ``<out_dir>/runs/``.

    Use as a context manager. ``runner`` replaces Flower (no SuperLink is started
    then); ``total`` is the number of runs planned, for the ``[i/total]`` progress.
    """

    def __init__(
        self,
        out_dir: Path,
        *,
        total: int | None = None,
        cpus_per_client: int = 1,
        run_timeout: float = 3600,
        echo: bool = False,
        runner: Runner | None = None,
        app_dir: Path = APP_DIR,
        stream: TextIO | None = None,
    ) -> None:
        self.out_dir = Path(out_dir).expanduser().resolve()
        self.runs_dir = self.out_dir / RUNS
        self.total = total
        self.cpus_per_client = cpus_per_client
        self.run_timeout = run_timeout
        self.echo = echo
        self.app_dir = app_dir
        self.stream = stream
        self.results: dict[str, RunResult] = {}
        self._runner = runner
        self._home: FlowerHome | None = None
        self._stack: ExitStack | None = None
        self._count = 0

    # ------------------------------------------------------------- lifetime
    def __enter__(self) -> Study:
        stack = ExitStack()
        try:
            self.runs_dir.mkdir(parents=True, exist_ok=True)
            stack.enter_context(_exclusive_lock(self.out_dir / ".study.lock"))
            if self._runner is None:
                stack.enter_context(sigterm_as_interrupt())
        except BaseException:
            stack.close()
            raise
        self._stack = stack
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._home = None
        if self._stack is not None:
            stack, self._stack = self._stack, None
            stack.close()

    # ------------------------------------------------------------- runs
    def run(
        self,
        name: str,
        run_config: dict[str, Any],
        num_supernodes: int,
        *,
        label: str | None = None,
    ) -> Rows:
        """Run the app once (or reuse ``runs/<name>/`` if it finished before) and
        return its history rows; prints one progress line."""
        _check_name(name)
        if self._stack is None:
            raise RuntimeError("use Study as a context manager: with Study(...) as s:")
        self._count += 1
        label = label or name
        wanted = _canonical(
            {
                "run_config": {
                    k: v for k, v in run_config.items() if k != "output-dir"
                },
                "num_supernodes": num_supernodes,
            }
        )
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
            print(
                f"{label}: resuming {earlier} from its checkpoint",
                file=self.stream or sys.stdout,
                flush=True,
            )
        else:
            shutil.rmtree(staging, ignore_errors=True)  # a try without a round
            staging.mkdir(parents=True)
        log_dir = staging / "logs"
        started = time.monotonic()
        runner = self._runner or self._flower_runner
        run_dir = Path(runner(config, num_supernodes, log_dir))
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
        self, run_config: dict[str, Any], num_supernodes: int, log_dir: Path
    ) -> Path:
        """Run the app through ``flwr run`` on the study's SuperLink."""
        if self._home is None:
            self._home = self._start_superlink()
        log_path = log_dir / "run.log"
        run_id = flwr_run(
            self.app_dir,
            CONNECTION,
            self._home,
            run_config,
            log_path=log_path,
            federation_config=simulation_config(num_supernodes, self.cpus_per_client),
            timeout=self.run_timeout,
            echo=self.echo,
        )
        status = run_status(CONNECTION, self._home, run_id)
        state = str(status.get("status", ""))
        if state != "finished:completed":
            raise StudyError(
                f"run {run_id} ended {state} {status.get('status-details', '')}; "
                f"log {log_path}, ends with:\n{_tail(log_path)}"
            )
        if run_config.get("resume"):
            return Path(run_config["resume-dir"])
        output_dir = Path(run_config["output-dir"])
        folders = [p for p in output_dir.glob(f"*-run{run_id}*") if p.is_dir()]
        if len(folders) != 1:
            raise StudyError(
                f"run {run_id} completed but left {len(folders)} run folders in "
                f"{output_dir}; log {log_path}"
            )
        return folders[0]

    def _start_superlink(self) -> FlowerHome:
        """The study's SuperLink, started for the first run that needs it (a study
        whose runs all finished before needs none) and stopped on exit."""
        assert self._stack is not None
        tmp = self._stack.enter_context(tempfile.TemporaryDirectory(prefix="fl-study-"))
        home = FlowerHome(Path(tmp) / "flwr")
        port = free_port()
        home.add_connection(CONNECTION, f"127.0.0.1:{port}")
        superlink = start_simulation_superlink(home, port, self.out_dir / "logs")
        self._stack.callback(_stop, superlink)
        return home

    def _result(
        self, name: str, label: str, run_dir: Path, seconds: float, skipped: bool
    ) -> RunResult:
        config_path = run_dir / "config.json"
        config = json.loads(config_path.read_text()) if config_path.exists() else {}
        return RunResult(
            name, label, read_history(run_dir), seconds, skipped, run_dir, config
        )

    def _progress(self, result: RunResult) -> None:
        count = f"{self._count}/{self.total}" if self.total else str(self._count)
        last = result.rows[-1]
        took = f"{result.seconds:.0f} s"
        if result.skipped:
            took += ", finished before: skipped"
        print(
            f"[{count}] {result.label}: {percent(last['test_accuracy'])} after "
            f"{last['round']} rounds ({took})",
            file=self.stream or sys.stdout,
            flush=True,
        )


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


def _stop(superlink: Any) -> None:
    with uninterruptible():
        superlink.stop()


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


def _canonical(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists, etc.)."""
    return json.loads(json.dumps(value, default=str))


def _difference(found: Mapping[str, Any], wanted: Mapping[str, Any]) -> str:
    old = _flatten(found)
    new = _flatten(wanted)
    keys = sorted(set(old) | set(new))
    return ", ".join(
        f"{k}: {old.get(k, '-')!r} there, {new.get(k, '-')!r} now"
        for k in keys
        if old.get(k) != new.get(k)
    )


def _flatten(value: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
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


# --------------------------------------------------------------------- pure helpers
def rounds_to_target(rows: Sequence[Mapping[str, Any]], target: float) -> int | None:
    """The first round whose test accuracy (a fraction) is >= ``target``; None if
    no round reached it."""
    for row in rows:
        accuracy = row.get("test_accuracy")
        if accuracy is not None and accuracy >= target:
            return int(row["round"])
    return None


def final_accuracy(rows: Sequence[Mapping[str, Any]]) -> float | None:
    """Test accuracy (fraction) of the last round, None if there is none."""
    if not rows or rows[-1].get("test_accuracy") is None:
        return None
    return float(rows[-1]["test_accuracy"])


def mean_per_round(rows: Sequence[Mapping[str, Any]], key: str) -> float | None:
    """Mean of ``key`` over the training rounds (round 0, the initial model, left
    out); None if no round has it."""
    values = [
        float(row[key])
        for row in rows
        if row["round"] >= 1 and row.get(key) is not None
    ]
    return sum(values) / len(values) if values else None


def percent(fraction: float | None, digits: int = 1) -> str:
    """0.8412 -> ``84.1%``; None -> ``-``."""
    if fraction is None or not math.isfinite(fraction):
        return "-"
    return f"{100 * fraction:.{digits}f}%"


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub-flavoured markdown table; None is shown as ``-``, ``|`` escaped."""

    def cell(value: Any) -> str:
        text = "-" if value is None else str(value)
        return text.replace("|", "\\|").replace("\n", " ")

    lines = [
        "| " + " | ".join(cell(h) for h in headers) + " |",
        "|" + "|".join("---" for _ in headers) + "|",
    ]
    for row in rows:
        if len(row) != len(headers):
            raise ValueError(
                f"row has {len(row)} cells, the table {len(headers)} columns: {row!r}"
            )
        lines.append("| " + " | ".join(cell(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


def plot_curves(
    path: Path,
    panels: Mapping[str, Mapping[str, Sequence[Mapping[str, Any]]]],
    *,
    title: str = "",
    targets: Mapping[str, float] | None = None,
) -> None:
    """Test accuracy (%) against round for many runs, one panel per key of
    ``panels`` (``{panel title: {curve label: history rows}}``), into one PNG.

    A label keeps its colour and line style in every panel, and one legend below
    the panels lists them all. ``targets`` (``{panel title: accuracy fraction}``)
    draws a dashed horizontal line. Written atomically.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels: list[str] = []
    for curves in panels.values():
        labels += [label for label in curves if label not in labels]
    palette = plt.get_cmap("tab10").colors  # beyond 10 labels: dashed, then ...
    styles = ("-", "--", "-.", ":")
    look = {
        label: {
            "color": palette[i % len(palette)],
            "ls": styles[(i // len(palette)) % len(styles)],
        }
        for i, label in enumerate(labels)
    }
    count = max(1, len(panels))
    fig, axes = plt.subplots(
        1,
        count,
        figsize=(5.5 * count + 0.5, 5.0 + 0.25 * math.ceil(len(labels) / 4)),
        squeeze=False,
        sharey=True,
        layout="constrained",
    )
    for ax, (panel, curves) in zip(axes[0], panels.items(), strict=False):
        for label, rows in curves.items():
            points = [
                (row["round"], 100 * row["test_accuracy"])
                for row in rows
                if row.get("test_accuracy") is not None
            ]
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, lw=1.6, marker="o", ms=2.5, label=label, **look[label])
        if targets and panel in targets:
            ax.axhline(
                100 * targets[panel], color="grey", lw=1, ls="--", label="_target"
            )
            ax.annotate(
                f"target {100 * targets[panel]:g}%",
                (0, 100 * targets[panel]),
                xycoords=("axes fraction", "data"),
                xytext=(4, 3),
                textcoords="offset points",
                color="grey",
                fontsize=8,
            )
        ax.set(title=panel, xlabel="round")
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    axes[0][0].set_ylabel("test accuracy (%)")
    handles = [
        plt.Line2D([], [], lw=1.6, label=label, **look[label]) for label in labels
    ]
    if handles:
        fig.legend(
            handles=handles,
            loc="outside lower center",
            ncol=min(len(handles), 4 if count == 1 else 6),
            frameon=False,
        )
    if title:
        fig.suptitle(title)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, buffer.getvalue())


def write_text(path: Path, text: str) -> None:
    """A text file (the markdown report), written atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, text.encode())


def write_results(path: Path, payload: Any) -> None:
    """The study's raw numbers as JSON, written atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, payload)


def clock(seconds: float) -> str:
    """3725 -> ``1 h 02 min 05 s``; 65 -> ``1 min 05 s``; 5.2 -> ``5 s``."""
    total = round(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min {secs:02d} s"
    if minutes:
        return f"{minutes} min {secs:02d} s"
    return f"{secs} s"


# --------------------------------------------------------------------- command line
def add_common_arguments(
    parser: argparse.ArgumentParser,
    *,
    default_out: str,
    default_strategies: Sequence[str],
    default_rounds: int = 30,
) -> None:
    """The options every study takes (dataset, rounds, strategies, out, ...)."""
    parser.add_argument(
        "--dataset",
        choices=DATASETS,
        default="fashion-mnist",
        help="dataset (default: %(default)s)",
    )
    parser.add_argument(
        "--data-dir",
        default=None,
        help="folder of IDX files (default: /usr/share/datasets/fashion-mnist for "
        "fashion-mnist; for mnist, '' = download with torchvision)",
    )
    parser.add_argument(
        "--rounds", type=int, default=default_rounds, help="rounds (default: 30)"
    )
    parser.add_argument(
        "--strategies",
        default=",".join(default_strategies),
        help="comma-separated strategies (default: %(default)s)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(default_out),
        help="report and finished runs go here; re-running skips the runs already "
        "in it (default: %(default)s). Inside the project, keep it under a "
        "git-ignored folder such as outputs/: flwr run packs the project's other "
        ".json and .md files into every run",
    )
    parser.add_argument("--seed", type=int, default=42, help="run seed (default: 42)")
    parser.add_argument(
        "--num-supernodes",
        type=int,
        default=100,
        help="virtual clients (default: 100)",
    )
    parser.add_argument(
        "--cpus-per-client",
        type=int,
        default=1,
        help="Ray CPUs per virtual client (1 = one client per core)",
    )
    parser.add_argument(
        "--run-timeout",
        type=float,
        default=3600,
        help="seconds one run may take before it counts as failed (default: 3600)",
    )
    parser.add_argument(
        "--verbose", action="store_true", help="stream every run's Flower log"
    )


def check_common_arguments(
    parser: argparse.ArgumentParser,
    args: argparse.Namespace,
    allowed_strategies: Iterable[str],
) -> list[str]:
    """Validate the shared options (``parser.error`` on a bad one), fill in the
    data folder, and return the chosen strategies in order."""
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    if args.num_supernodes < 2:
        parser.error("--num-supernodes must be >= 2")
    if args.cpus_per_client < 1:
        parser.error("--cpus-per-client must be >= 1")
    if args.data_dir is None:
        args.data_dir = DEFAULT_DATA_DIRS.get(args.dataset, "")
    if args.data_dir:
        args.data_dir = str(Path(args.data_dir).expanduser().resolve())
        if not Path(args.data_dir).is_dir():
            parser.error(f"--data-dir {args.data_dir}: no such folder")
    allowed = list(allowed_strategies)
    chosen = [s.strip() for s in args.strategies.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in allowed]
    if unknown or not chosen:
        parser.error(
            f"--strategies: unknown {', '.join(unknown) or '(none given)'}; "
            f"choose from {', '.join(allowed)}"
        )
    return list(dict.fromkeys(chosen))


def command_line(script: str, argv: Sequence[str]) -> str:
    """The command as one would retype it: ``python scripts/x.py --rounds 2``."""
    return shlex.join(["python", script, *argv])


def describe_setup(config: Mapping[str, Any]) -> str:
    """One line on the training set-up, from a run's ``config.json``."""
    if not config:
        return ""
    batch = config.get("batch_size") or "∞"
    return (
        f"{config.get('model')} on {config.get('dataset')}, "
        f"C={config.get('fraction_fit')}, E={config.get('local_epochs')}, "
        f"B={batch}, client lr {config.get('learning_rate')}, "
        f"seed {config.get('seed')}"
    )


def provenance(
    command: str,
    date: str,
    wall_seconds: float,
    results: Mapping[str, RunResult],
    planned: int,
) -> str:
    """The report's closing lines: command, date, wall time, what was reused."""
    reused = sum(result.skipped for result in results.values())
    run_seconds = sum(result.seconds for result in results.values())
    lines = [
        f"- command: `{command}`",
        f"- date: {date}",
        f"- wall time: {clock(wall_seconds)} for this invocation "
        f"({len(results)} of {planned} runs finished, {reused} of them reused from "
        f"an earlier invocation); the runs' own times add up to {clock(run_seconds)}",
        f"- each run's history, config and logs: `{RUNS}/<name>/`",
    ]
    if len(results) < planned:
        lines.append(
            f"- **incomplete**: {planned - len(results)} runs missing; run the same "
            "command again to finish (finished runs are skipped)"
        )
    return "\n".join(lines) + "\n"
