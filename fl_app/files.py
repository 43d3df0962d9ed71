"""Atomic files: readers see the old file or the new one whole, never a torn one.

Every result here (history, model, plot, checkpoint, client state, caches, reports)
is written to a temporary name in the same folder and renamed over the old file, so
a crash or a kill mid-write leaves the previous complete version.

A leaf: this module imports only the standard library.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old or the new file whole
    (a temporary file in the same folder, renamed over ``path``; removed on error)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json(path: Path, payload: Any) -> None:
    """``payload`` as indented JSON (anything else as its ``str``)."""
    write_atomically(path, json.dumps(payload, indent=1, default=str).encode() + b"\n")


def write_text(path: Path, text: str) -> None:
    """A text file, its folder made if needed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, text.encode())
