"""One run of the app on a SuperLink: its run config as the scripts take it, and how
it ended.

Shared by the simulation (``simulation.SimulationSuperLink``), the local TLS
deployment (``federation.Federation``) and the scripts in front of them, so that a
run reads the same whichever SuperLink it went to: ``RunOutcome`` (Flower's status,
the folder the ServerApp wrote, the ``flwr run`` log) from ``SuperLinkOwner._run``,
and one way to print it and pick the exit code (``report_outcome``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from flwr.common.config import parse_config_args

from fl_app.checkpoint import CHECKPOINT_FILE, MAY_CHANGE, read_checkpoint
from fl_app.config import ConfigError, RunConfig
from fl_app.kernels import pinned_env
from fl_app.launch.flower_cli import FlowerHome, flwr_run, run_status
from fl_app.launch.processes import sigterm_as_interrupt, uninterruptible

APP_DIR = Path(__file__).resolve().parents[2]
COMPLETED = "finished:completed"


@dataclass(frozen=True)
class RunOutcome:
    """How one ``flwr run`` ended, and where its results and log are."""

    run_id: int
    status: str  # Flower's, e.g. "finished:completed" or "finished:failed"
    details: str  # Flower's status details: the ServerApp's error, if any
    run_dir: Path | None  # the folder the ServerApp wrote; None if none was found
    log_path: Path

    @property
    def completed(self) -> bool:
        return self.status == COMPLETED and self.run_dir is not None


class SuperLinkOwner:
    """What a simulation SuperLink and a local federation share: meanwhile SIGTERM
    is a KeyboardInterrupt, on exit (error, Ctrl-C and SIGTERM too) ``stop()`` ends
    every process, and ``flwr run`` reads how the run ended."""

    connection: str  # the SuperLink's name in the private ``FLWR_HOME``

    def __init__(self, app_dir: Path) -> None:
        self.app_dir = app_dir
        self._signals = ExitStack()

    def __enter__(self) -> Self:
        self._signals.enter_context(sigterm_as_interrupt())
        return self

    def __exit__(self, *exc: object) -> None:
        with uninterruptible():  # a second Ctrl-C must not cut clean-up short
            self.stop()
        # Only now: restored inside ``uninterruptible``, SIGTERM's handler would be
        # overwritten by the one it saw on entry (KeyboardInterrupt, for good).
        self._signals.close()

    def stop(self) -> None:
        raise NotImplementedError

    def _run(
        self, home: FlowerHome, run_config: Mapping[str, Any], **flwr_args: Any
    ) -> RunOutcome:
        """``flwr run`` the app (``flower_cli.flwr_run``, given ``flwr_args``),
        then ask Flower how the run ended (the CLI exits 0 for a failed run too) and
        find its folder."""
        run_id = flwr_run(self.app_dir, self.connection, home, run_config, **flwr_args)
        status = run_status(self.connection, home, run_id)
        return RunOutcome(
            run_id=run_id,
            status=str(status.get("status", "")),
            details=str(status.get("status-details", "")),
            run_dir=run_folder(run_config, run_id),
            log_path=flwr_args["log_path"],
        )


def run_folder(run_config: Mapping[str, Any], run_id: int) -> Path | None:
    """The folder run ``run_id`` wrote: ``resume-dir`` when it resumed, else the
    one ``<output-dir>/<timestamp>-run<id>`` (None if there is not exactly one, or
    no ``output-dir`` to look in)."""
    if run_config.get("resume"):
        return Path(str(run_config["resume-dir"]))
    if "output-dir" not in run_config:
        return None
    output_dir = Path(str(run_config["output-dir"]))
    found = [p for p in output_dir.glob(f"*-run{run_id}*") if p.is_dir()]
    return found[0] if len(found) == 1 else None


def add_run_flags(parser: argparse.ArgumentParser) -> None:
    """``--run-config``, ``--reproducible`` and ``--resume``, the same for every
    script that runs once."""
    parser.add_argument(
        "--run-config",
        default="",
        help="overrides of [tool.flwr.app.config], Flower syntax",
    )
    parser.add_argument(
        "--reproducible",
        action="store_true",
        help="pin the CPU kernels in every process: the same history on any CPU "
        "(run config reproducible = true; slower, see docs/reproducibility.md)",
    )
    parser.add_argument(
        "--resume",
        type=Path,
        metavar="RUN_DIR",
        help="continue this run folder from its last completed round, with its own "
        "config (--run-config may change only how long and where)",
    )


def requested_run_config(
    parser: argparse.ArgumentParser, args: argparse.Namespace, default_output_dir: Path
) -> dict[str, Any]:
    """The run config ``--run-config`` (Flower syntax), ``--reproducible`` and
    ``--resume`` ask for, ``output-dir`` made absolute: the ServerApp runs in the
    SuperLink's working directory, not the caller's. A ``--resume`` folder that
    cannot be resumed, or an override it cannot take, is a usage error
    (``parser.error``, exit 2)."""
    run_config = parse_config_args([args.run_config]) if args.run_config else {}
    if args.reproducible:
        run_config["reproducible"] = True
    if args.resume is not None:
        try:
            return resume_from(run_config, args.resume)
        except (FileNotFoundError, ValueError) as error:
            parser.error(str(error))
    output_dir = Path(str(run_config.get("output-dir", default_output_dir)))
    run_config["output-dir"] = str(output_dir.expanduser().resolve())
    return run_config


def resume_from(overrides: Mapping[str, Any], run_dir: Path) -> dict[str, Any]:
    """The run config that continues ``run_dir`` (``--resume`` of the scripts): the
    folder's own ``config.json``, with ``overrides`` of the keys a resumed run may
    change (``fl_app.checkpoint.MAY_CHANGE``: rounds, timeouts, where).

    An override of any other key that differs from the folder's is a ValueError
    naming it, since every process (the ServerApp and each ClientApp) must read the
    config the run started with. The ServerApp checks the checkpoint against it too.
    """
    run_dir = run_dir.expanduser().resolve()
    if not (run_dir / CHECKPOINT_FILE).is_file():
        raise FileNotFoundError(
            f"--resume {run_dir}: no {CHECKPOINT_FILE} there (a run folder that "
            "completed at least one round has one)"
        )
    saved = folder_run_config(run_dir)
    for key, value in overrides.items():
        if key not in MAY_CHANGE and key in saved and saved[key] != value:
            raise ValueError(
                f"--resume {run_dir}: {key} = {value!r} differs from the run's "
                f"{saved[key]!r}; a resumed run keeps its config (only "
                f"{', '.join(sorted(MAY_CHANGE))} may change)"
            )
    return {
        **saved,
        **overrides,
        "resume": True,
        "resume-dir": str(run_dir),
        "output-dir": str(run_dir.parent),  # where the run lives, and its logs go
    }


def folder_run_config(run_dir: Path) -> dict[str, Any]:
    """A run folder's config as Flower's flat keys: its ``config.json``, written
    when the run started (keys added since take their defaults)."""
    from fl_app.results import CONFIG_FILE  # torch: only when resuming

    path = run_dir / CONFIG_FILE
    try:
        values = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise FileNotFoundError(
            f"--resume {run_dir}: cannot read {path}: {error}"
        ) from None
    try:
        config = RunConfig.from_dict(values)
    except (ConfigError, TypeError) as error:
        raise ValueError(f"--resume {run_dir}: {path}: {error}") from None
    flat = config.to_flower()
    flat.pop("resume-dir")  # set by resume_from; a resumed run's own is stale
    return flat


def num_supernodes(
    requested: int | None, run_config: Mapping[str, Any], default: int
) -> int:
    """How many SuperNodes to start: as ``--num-supernodes`` says; else, resuming a
    run that had one partition per node, as many as it had (its checkpoint says);
    else ``default``."""
    if requested is not None:
        return requested
    if run_config.get("resume") and not run_config.get("num-partitions"):
        checkpoint = Path(str(run_config["resume-dir"])) / CHECKPOINT_FILE
        _, state = read_checkpoint(checkpoint)
        return int(state.get("num_partitions") or default)
    return default


def process_env(run_config: Mapping[str, Any]) -> dict[str, str]:
    """What every Flower process of the run starts with besides Flower's own: the
    pinned kernels when the run is ``reproducible`` (``fl_app.kernels``)."""
    return pinned_env() if run_config.get("reproducible") else {}


def report_outcome(outcome: RunOutcome, output_dir: Path, log_dir: Path) -> int:
    """Print how a run ended and where its results or logs are; the exit code (0 if
    Flower reports it completed, else 1)."""
    print(json.dumps({"run-id": outcome.run_id, "status": outcome.status}))
    if outcome.status == COMPLETED:
        latest = output_dir / "latest"
        print(f"results: {latest.resolve() if latest.exists() else output_dir}")
        return 0
    print(
        f"run {outcome.run_id} did not complete: {outcome.status} {outcome.details}"
        f"\nlogs in {log_dir}",
        file=sys.stderr,
    )
    return 1
