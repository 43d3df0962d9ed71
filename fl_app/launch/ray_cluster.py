"""A Ray cluster of several nodes on this one machine, started as Ray users start one.

The simulation can run on a multi-host Ray cluster (``ray start --head`` on one host,
``ray start --address=HEAD:PORT`` on the others, then the SuperLink started with
``RAY_ADDRESS``: ``docs/ray-cluster.md``). Tests and the node-kill study need such a
cluster without several hosts, and without touching other Ray processes that may run
on this machine; ``LocalRayCluster`` starts the same ``ray start`` commands here:

* every node gets a private ``--temp-dir`` under a short folder in ``/tmp`` (Ray's
  socket paths must stay under ~107 characters), so ``ray start`` records the
  cluster there and not in ``/tmp/ray/ray_current_cluster``, where a ``ray.init()``
  with no address elsewhere on the machine would find and join it;
* every port a node binds is chosen free (two nodes on one host must not share the
  defaults), workers take random ports;
* each ``ray start --block`` is a ``ManagedProcess``: Ray starts the node's GCS,
  raylet, agents and, through the raylet, its actors in that process group, so
  ``kill_worker`` (SIGKILL to the group: a crashed host) and ``stop`` reach exactly
  what this cluster started, by PID, never with ``ray stop`` (which stops every Ray
  on the machine).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Self

import psutil

from fl_app.launch.flower_cli import flower_bin
from fl_app.launch.processes import (
    LOOPBACK,
    ManagedProcess,
    free_port,
    process_family,
    sigterm_as_interrupt,
    uninterruptible,
    wait_for_port,
)

#: Ray's node id, as the raylet is given it (``--node_id=<hex>``) and ``ray status``
#: lists it (``node_<hex>``).
_NODE_ID = re.compile(r"--node_id=([0-9a-f]+)")
#: The head's GCS, as it registers a node (``gcs_server.out``).
_REGISTERED = re.compile(r"Registering new node\. node_id=([0-9a-f]+)")


class LocalRayCluster:
    """A head and ``num_nodes - 1`` worker nodes on this machine; a context manager
    that stops them all on exit, error, Ctrl-C and SIGTERM.

    ``address`` is what a simulation joins (``RAY_ADDRESS``); ``node_ids[i]`` is
    node ``i``'s Ray node id (0 the head), as actors report it
    (``ray.get_runtime_context().get_node_id()``) and the history's
    ``clients_by_node`` abbreviates it.
    """

    def __init__(
        self,
        num_nodes: int = 2,
        *,
        num_cpus: int = 1,
        object_store_mb: int = 200,
        log_dir: Path | None = None,
        timeout: float = 90,
    ) -> None:
        """``object_store_mb``: each node's object store; Ray's default (30% of the
        RAM per node) is far more than the simulation's messages need.
        ``log_dir`` keeps each ``ray start``'s output (``ray-node-<i>.log``);
        without it the output goes with the temporary folder."""
        if num_nodes < 1:
            raise ValueError(f"num_nodes must be >= 1, got {num_nodes}")
        self.num_nodes = num_nodes
        self.num_cpus = num_cpus
        self.object_store_mb = object_store_mb
        self.log_dir = log_dir
        self.timeout = timeout
        self.temp_dir: Path | None = None
        #: The head's GCS: known before the cluster starts, so that a SuperLink
        #: that will join it can start meanwhile.
        self.address = f"{LOOPBACK}:{free_port()}"
        self.nodes: list[ManagedProcess] = []
        self.node_ids: list[str] = []
        self._signals = ExitStack()

    def __enter__(self) -> Self:
        self._signals.enter_context(sigterm_as_interrupt())
        try:
            self.start()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        with uninterruptible():  # a second Ctrl-C must not cut clean-up short
            self.stop()
        self._signals.close()

    # ----------------------------------------------------------------- start
    def start(self) -> None:
        """The head, then the workers (together), returned once the head's GCS
        has registered every node."""
        # /tmp, not the caller's TMPDIR (pytest's is too long for Ray's sockets).
        self.temp_dir = Path(tempfile.mkdtemp(prefix="rc-", dir="/tmp"))
        port = int(self.address.rpartition(":")[2])
        head_args = ["--head", f"--port={port}", "--include-dashboard=false"]
        head_args += [f"--dashboard-port={free_port()}"]
        head_args += [f"--ray-client-server-port={free_port()}"]
        head = self._start_node(0, head_args)
        wait_for_port(LOOPBACK, port, self.timeout, head)
        for i in range(1, self.num_nodes):
            self._start_node(i, [f"--address={self.address}"])
        self.node_ids = [self._node_id(node) for node in self.nodes]
        self._wait_until_active()

    def _start_node(self, index: int, args: list[str]) -> ManagedProcess:
        """``ray start <args> --block`` with this node's temp dir and free ports."""
        assert self.temp_dir is not None
        command = [flower_bin("ray"), "start", *args, "--block"]
        command += [f"--temp-dir={self.temp_dir / f'n{index}'}"]
        command += [f"--num-cpus={self.num_cpus}", "--disable-usage-stats"]
        command += [f"--object-store-memory={self.object_store_mb * 2**20}"]
        for flag in (
            "node-manager-port",
            "object-manager-port",
            "dashboard-agent-listen-port",
            "dashboard-agent-grpc-port",
            "runtime-env-agent-port",
            "metrics-export-port",
        ):
            command += [f"--{flag}={free_port()}"]
        command += ["--min-worker-port=0", "--max-worker-port=0"]  # random ports
        log_dir = self.log_dir or self.temp_dir
        node = ManagedProcess.start(
            f"ray node {index}", command, log_dir / f"ray-node-{index}.log"
        )
        self.nodes.append(node)
        return node

    def _node_id(self, node: ManagedProcess) -> str:
        """The id the node's raylet was started with, from its command line."""
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            self._check_alive(node)
            for process in process_family(node.pid):
                try:
                    found = _NODE_ID.search(" ".join(process.cmdline()))
                except psutil.Error:  # exited or not readable: not the raylet
                    continue
                if found:
                    return found.group(1)
            time.sleep(0.2)
        raise TimeoutError(f"{node.name} started no raylet in {self.timeout:g}s")

    def _wait_until_active(self) -> None:
        """Until the head's GCS has registered every node's raylet (what the
        simulation's pool counts, ``ray.nodes()``): read from the GCS's log, since
        each ``ray status`` costs 2 s of a 2-core machine."""
        assert self.temp_dir is not None
        log = self.temp_dir / "n0" / "session_latest" / "logs" / "gcs_server.out"
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            for node in self.nodes:
                self._check_alive(node)
            try:
                registered = set(_REGISTERED.findall(log.read_text(errors="replace")))
            except OSError:
                registered = set()
            if set(self.node_ids) <= registered:
                return
            time.sleep(0.2)
        raise TimeoutError(
            f"not every node of {self.node_ids} registered in {log} after "
            f"{self.timeout:g}s; ray status:\n{self.status()}"
        )

    @staticmethod
    def _check_alive(node: ManagedProcess) -> None:
        if not node.alive():
            raise RuntimeError(
                f"{node.name} exited with code {node.popen.returncode}; see "
                f"{node.log_path}:\n" + node.tail()
            )

    # ----------------------------------------------------------------- use
    def status(self) -> str:
        """``ray status`` of this cluster, as its text (an error's text if it fails)."""
        out = subprocess.run(
            [flower_bin("ray"), "status", f"--address={self.address}"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        return out.stdout if out.returncode == 0 else out.stdout + out.stderr

    def kill_worker(self, index: int) -> None:
        """SIGKILL worker node ``index`` (1..num_nodes-1): its raylet, agents and the
        actors it runs, all at once and without clean-up, as a crashed host."""
        if not 0 < index < len(self.nodes):
            raise ValueError(
                f"no worker node {index}: workers are 1..{len(self.nodes) - 1}"
            )
        self.nodes[index].kill()

    # ----------------------------------------------------------------- stop
    def stop(self, grace: float = 2.0) -> None:
        """Stop every node, together, then remove the temp dir. A node's raylet,
        GCS and agents exit within 1-2 s of SIGTERM; ``ray start --block`` and the
        head's monitors would take 2 s more (measured here), so what is left after
        ``grace`` is SIGKILLed: the cluster is thrown away with its temp dir."""
        nodes, self.nodes = self.nodes, []
        if nodes:
            with ThreadPoolExecutor(max_workers=len(nodes)) as pool:
                list(pool.map(lambda node: node.stop(grace), nodes))
        if self.temp_dir is not None:
            shutil.rmtree(self.temp_dir, ignore_errors=True)
            self.temp_dir = None


def node_counts(clients_by_node: str) -> dict[str, int]:
    """A history's ``clients_by_node`` value (``"<8 hex>:<clients> ..."``) as a dict."""
    pairs = (entry.split(":") for entry in clients_by_node.split())
    return {node: int(count) for node, count in pairs}
