"""The server's checkpoint: everything the rest of a run depends on, in one file.

After every completed round the strategy writes ``checkpoint.npz`` into its run
folder (written whole, then renamed, like every result here). It holds the
strategy's ``state_dict()`` (global weights, round, history, server-optimizer
moments, SCAFFOLD's variate, the privacy ledger) and the run configuration.

Why no generator states: every random draw of a round comes from a generator seeded
by ``(seed, round, ...)`` (client sampling, local shuffling, seeded DP noise), so the
seed and the round number are the whole RNG state. DP noise from OS entropy
(``dp.noise-seed = -1``) is, by design, not repeatable at all.

A checkpoint is refused, with an error naming what differs, when it is corrupt or
truncated, or was made by a run whose identity differs (model, dataset, strategy,
seed, partitioning, any algorithm knob): only the knobs in ``MAY_CHANGE`` may differ
on resume.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from fl_app.config import RunConfig
from fl_app.files import write_atomically, write_text

CHECKPOINT_FILE = "checkpoint.npz"
RESUME_FILE = "resume.toml"
FORMAT = 1
#: Run-config keys a resumed run may change: how long and where, not what it trains.
MAY_CHANGE = frozenset(
    {
        "num-server-rounds",
        "resume",
        "resume-dir",
        "round-timeout",
        "min-available-timeout",
        "min-available-clients",
        "output-dir",
        "stop-at-accuracy",
        "dp.max-epsilon",
        "tracking.tensorboard",
        "tracking.mlflow-uri",
        "tracking.mlflow-experiment",
    }
)


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be resumed from; the message says why."""


def save_checkpoint(path: Path, state: dict[str, Any], config: RunConfig) -> None:
    """Write ``state`` (nested dicts, lists, scalars, NumPy arrays) atomically."""
    arrays: list[np.ndarray] = []
    meta = {
        "format": FORMAT,
        "config": config.to_flower(),
        "state": _pack(state, arrays),
    }
    buffer = io.BytesIO()
    np.savez(
        buffer,
        meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
        **{f"array{i}": array for i, array in enumerate(arrays)},
    )
    write_atomically(path, buffer.getvalue())


def load_checkpoint(path: Path, config: RunConfig) -> dict[str, Any]:
    """The state saved in ``path``, after checking it belongs to this run."""
    saved, state = read_checkpoint(path)
    differences = config_differences(saved, config.to_flower())
    if differences:
        raise CheckpointError(
            f"{path} was made by a different run: {'; '.join(differences)} "
            "(only " + ", ".join(sorted(MAY_CHANGE)) + " may change on resume; "
            f"to resume the folder with its own config: flwr run . --run-config "
            f"{path.parent / RESUME_FILE}, or scripts/simulate.py --resume "
            f"{path.parent})"
        )
    return state


def read_checkpoint(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The run config (Flower's flat keys) and the state saved in ``path``,
    unchecked."""
    if not path.is_file():
        raise CheckpointError(
            f"no checkpoint at {path}: resume needs the folder of a run that "
            "completed at least one round"
        )
    try:
        with np.load(path, allow_pickle=False) as stored:
            meta = json.loads(bytes(stored["meta"]))
            arrays = {name: stored[name] for name in stored.files if name != "meta"}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
        raise CheckpointError(
            f"{path} is corrupt or truncated ({type(error).__name__}: {error}); "
            "it was left as it is"
        ) from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(
            f"{path}: unknown checkpoint format {meta.get('format')!r} "
            f"(this version reads format {FORMAT})"
        )
    try:
        return dict(meta["config"]), _unpack(meta["state"], arrays)
    except (KeyError, TypeError) as error:
        raise CheckpointError(f"{path}: inconsistent content ({error})") from None


def write_resume_file(run_dir: Path, config: RunConfig) -> None:
    """``resume.toml`` in the run folder: its whole run config, set to continue
    that folder. Flower takes a TOML file as the ``--run-config``, so
    ``flwr run . --run-config <folder>/resume.toml`` resumes the run with nothing
    else to repeat, and every ClientApp reads the same config as the first time."""
    values = {**config.to_flower(), "resume": True, "resume-dir": str(run_dir)}
    lines = [
        f"{json.dumps(key)} = {_toml_value(value)}" for key, value in values.items()
    ]
    header = f"# flwr run . --run-config {run_dir / RESUME_FILE}\n"
    write_text(run_dir / RESUME_FILE, header + "\n".join(lines) + "\n")


def _toml_value(value: Any) -> str:
    """A scalar as TOML writes it (JSON's string escapes are TOML's too)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value), ensure_ascii=False)


def config_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``key: checkpoint has X, this run has Y`` for each identity key that differs."""
    keys = sorted((saved.keys() | current.keys()) - MAY_CHANGE)
    return [
        f"{key}: checkpoint has {saved.get(key)!r}, this run has {current.get(key)!r}"
        for key in keys
        if saved.get(key) != current.get(key)
    ]


def _pack(value: Any, arrays: list[np.ndarray]) -> Any:
    """JSON-able structure with each array replaced by ``{"__array__": index}``."""
    if isinstance(value, np.ndarray):
        arrays.append(value)
        return {"__array__": len(arrays) - 1}
    if isinstance(value, dict):
        return {str(key): _pack(item, arrays) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_pack(item, arrays) for item in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _unpack(value: Any, arrays: dict[str, np.ndarray]) -> Any:
    if isinstance(value, dict):
        if set(value) == {"__array__"}:
            return arrays[f"array{value['__array__']}"]
        return {key: _unpack(item, arrays) for key, item in value.items()}
    if isinstance(value, list):
        return [_unpack(item, arrays) for item in value]
    return value
