"""Client state that outlives a run: each node keeps its own copy on its own disk.

Flower gives every run a fresh ``Context``, so state a client carries between rounds
(SCAFFOLD's ``c_i``; compression error feedback) would be lost when a killed server
is resumed, which Flower sees as a new run. A real device keeps such state in its
own storage, and so does a node here:

* where: the node's ``--node-config "state-dir=<folder>"``, else
  ``<FL_APP_CACHE>/client-state`` (simulation: one machine, one folder);
* keyed by the experiment (the run folder's name, which the server sends in the fit
  config and which a resumed run keeps) and the partition, so a fresh run never
  sees an old run's state, and in simulation it does not matter which virtual node
  serves a partition;
* versioned by round: in round ``r`` a client reads the newest state written before
  ``r``. A round the server never completed (it was killed) is run again after the
  resume, and the state its first attempt wrote is ignored, then replaced.

Only the newest two versions of a partition are kept.
"""

from __future__ import annotations

import re
from pathlib import Path

from flwr.app import RecordDict
from flwr.common import Scalar
from flwr.common.serde import recorddict_from_proto, recorddict_to_proto
from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict

from fl_app import keys
from fl_app.data import cache_dir
from fl_app.files import write_atomically

_VERSION = re.compile(r"round-(\d+)\.bin")
_SAFE_NAME = re.compile(r"[A-Za-z0-9._-]+")


class NodeStore:
    """One partition's state in one experiment, as versions ``round-<r>.bin``."""

    def __init__(self, root: Path, experiment: str, partition: int) -> None:
        if not _SAFE_NAME.fullmatch(experiment) or experiment in (".", ".."):
            raise ValueError(f"experiment name {experiment!r} is not a plain name")
        self.folder = root / experiment / f"partition-{partition}"

    @classmethod
    def for_message(
        cls,
        node_config: dict[str, Scalar],
        message_config: dict[str, Scalar],
        partition: int,
    ) -> NodeStore | None:
        """The store a fit message asks for (None: it names no experiment)."""
        experiment = message_config.get(keys.EXPERIMENT)
        if not experiment:
            return None
        root = node_config.get(keys.STATE_DIR) or cache_dir() / "client-state"
        return cls(Path(str(root)).expanduser(), str(experiment), partition)

    def versions(self) -> list[int]:
        if not self.folder.is_dir():
            return []
        found = (_VERSION.fullmatch(path.name) for path in self.folder.iterdir())
        return sorted(int(match.group(1)) for match in found if match)

    def load(self, before_round: int) -> RecordDict:
        """The newest state written in a round before ``before_round`` (or empty)."""
        earlier = [r for r in self.versions() if r < before_round]
        if not earlier:
            return RecordDict()
        data = (self.folder / f"round-{earlier[-1]}.bin").read_bytes()
        return recorddict_from_proto(ProtoRecordDict.FromString(data))

    def save(self, state: RecordDict, server_round: int) -> None:
        """Keep the state as of the end of ``server_round``; drop older versions."""
        if not state:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        data = recorddict_to_proto(state).SerializeToString()
        write_atomically(self.folder / f"round-{server_round}.bin", data)
        for old in [r for r in self.versions() if r < server_round][:-1]:
            (self.folder / f"round-{old}.bin").unlink(missing_ok=True)
