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


def write_atomically(path: Path, data: bytes, *, durable: bool = True) -> None:
    """Write ``data`` to ``path`` so that readers see the old or the new file whole
    (a temporary file in the same folder, renamed over ``path``; removed on error).

    ``durable``: the data reach the disk before the rename (fsync), so that even a
    machine crash leaves the old file or the new one. A file rewritten every round
    from what the durable checkpoint holds (the history's views, the model, the
    plot) passes False: a killed process still leaves it whole, and a resumed run
    rewrites it, so the 5-10 ms of an fsync a round buy nothing there."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json(path: Path, payload: Any, *, durable: bool = True) -> None:
    """``payload`` as indented JSON (anything else as its ``str``)."""
    text = json.dumps(payload, indent=1, default=str).encode() + b"\n"
    write_atomically(path, text, durable=durable)


def write_text(path: Path, text: str) -> None:
    """A text file, its folder made if needed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, text.encode())
