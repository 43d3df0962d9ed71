"""A SuperExec whose ClientApps stay warm: ``python -m fl_app.launch.warm_executor``.

In Flower 1.42 every message a SuperNode receives starts a fresh ``flwr-clientapp``
process (``flwr/supernode/runtime/run_clientapp.py``) that imports Flower, installs
the FAB, imports the app (torch: 2-3 s here), handles that one message and exits.
With ``flower-supernode --isolation process`` the operator starts the executor that
acquires each task from the SuperNode's Runtime API. This module is that executor:
Flower's own ``run_superexec`` loop (the same ``AcquireTask`` polling, plugin and
arguments as ``flower-superexec``) with an ``Executor`` that, instead of starting a
process per task, serves the task itself as ``flwr-clientapp`` would, with Flower's
own functions (``pull_task_input``, ``push_message``, ``push_task_output``, the
task's heartbeat), and has the ClientApp called in a long-lived worker process
that keeps it loaded, and with it the app's imports, model and decoded data, for
the next task of the same FAB. The message and context go to the worker and the
reply and context come back as Flower's protobuf:

* one worker serves one FAB hash (an app and version): Flower's loader reuses a
  module already imported, so two versions of an app cannot share a process. A
  task of another FAB gets a worker of its own, a second task while the worker is
  busy a second worker. One worker is started ahead, with ``--preload`` modules
  (torch) imported, and bound to the first task's FAB;
* a worker that dies (crash, SIGKILL) while it holds a message gives Flower's
  error reply to it and the task ends as failed, at once (the round counts the
  failure; without a reply the SuperNode would wait for the message's TTL and
  take no other message meanwhile); the next task gets a fresh worker;
* a ClientApp that raises gives Flower's error reply, exactly as ``flwr-clientapp``
  builds it, and the worker goes on.

What is given up: isolation between messages of one app on one node. They share a
process, so a module global written by one message is seen by the next. This app
keeps per-client state only in ``Context.state`` and the node store
(``fl_app.client_state``); its module-level caches (the decoded dataset, the
partition indices, one model whose weights every message overwrites) depend only on
the run config and the message (``tests/test_warm_executor.py`` checks it).

Pinned to ``flwr==1.42.*``: it calls Flower internals (``run_superexec``'s
``get_executor``, the ``Executor`` protocol, ``run_clientapp``'s task functions);
``tests/test_warm_executor.py`` fails loudly if their shape changes.

Other task types (a ServerApp, SecAgg+ is a ClientApp mod) go to Flower's stock
``SubprocessExecutor``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import multiprocessing
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from logging import ERROR, INFO
from multiprocessing.connection import Connection
from typing import Any

#: How often the executor asks the SuperNode for a task (Flower's default is 1 s).
TASK_POLL_INTERVAL_S = "0.05"
READY = "ready"
TRACE_ENV = "FL_APP_EXECUTOR_TRACE"
MAX_TASKS = 8  # messages a node's executor serves at once


# --------------------------------------------------------------------- a worker
def runtime_client(
    token: str, address: str, certificates: bytes | None
) -> tuple[Any, Any]:
    """The SuperNode's Runtime API as ``flwr-clientapp`` dials it, for one task,
    and its retry invoker (limited to one try on the way out)."""
    from flwr.supercore.interceptors import (
        RuntimeTokenHttpInterceptor,
        RuntimeVersionHttpInterceptor,
    )
    from flwr.supercore.retry import make_simple_http_retry_invoker
    from flwr.supercore.runtime import RuntimeHttpClient
    from flwr.supercore.runtime.tracing import RuntimeTracingInterceptor

    retry_invoker = make_simple_http_retry_invoker()
    client = RuntimeHttpClient.from_server_address(
        server_address=address,
        insecure=certificates is None,
        root_certificates=certificates,
        interceptors=[
            RuntimeTracingInterceptor(),
            RuntimeVersionHttpInterceptor(component_name="flwr-clientapp"),
            RuntimeTokenHttpInterceptor(token),
        ],
        retry_invoker=retry_invoker,
    )
    return client, retry_invoker


def worker_main(conn: Connection, preload: tuple[str, ...] = ()) -> None:
    """A worker: ``preload`` imported, then jobs in (a message, its context, its
    FAB), the ClientApp's reply out, until the pipe closes."""
    for module in preload:  # third-party only: the app's own code is the FAB's
        try:
            importlib.import_module(module)
        except ImportError as error:
            print(f"warm executor: --preload {module}: {error}", file=sys.stderr)
    from flwr.proto.message_pb2 import Context as ContextProto
    from flwr.proto.message_pb2 import Message as MessageProto

    apps: dict[str, Any] = {}  # FAB hash -> its loaded ClientApp
    conn.send(READY)
    while True:
        try:
            job = conn.recv()
        except EOFError:
            return
        conn.send(call_client_app(job, apps, MessageProto, ContextProto))


def call_client_app(
    job: dict[str, Any], apps: dict[str, Any], message_proto: Any, context_proto: Any
) -> tuple[Any, ...]:
    """One message through the FAB's ClientApp (loaded once): ``("reply", message,
    context)`` as protobuf bytes, or ``("error", code, reason)`` as
    ``run_clientapp`` reports a ClientApp that raised."""
    from flwr.cli.install import install_from_fab
    from flwr.clientapp.client_app import LoadClientAppError
    from flwr.clientapp.utils import get_load_client_app_fn
    from flwr.common.constant import ErrorCode
    from flwr.common.serde import (
        context_from_proto,
        context_to_proto,
        message_from_proto,
        message_to_proto,
    )
    from flwr.supercore import log
    from flwr.supercore.task_identity import TaskIdentity

    try:
        TaskIdentity.task_id = job["task_id"]
        TaskIdentity.run_id = job["run_id"]
        TaskIdentity.node_id = job["node_id"]
        message = message_from_proto(message_proto.FromString(job["message"]))
        message.metadata.__dict__["_message_id"] = job["message_id"]
        context = context_from_proto(context_proto.FromString(job["context"]))
        client_app = apps.get(job["fab_hash"])
        if client_app is None:
            install_from_fab(job["fab_content"], skip_prompt=True)
            load = get_load_client_app_fn(
                default_app_ref="", app_path=None, multi_app=True
            )
            client_app = apps[job["fab_hash"]] = load(
                job["fab_id"], job["fab_version"], job["fab_hash"]
            )
        reply = client_app(message=message, context=context)
        return (
            "reply",
            message_to_proto(reply).SerializeToString(),
            context_to_proto(context).SerializeToString(),
        )
    except Exception as ex:  # as run_clientapp reports it
        log(ERROR, "ClientApp raised an exception", exc_info=ex)
        if isinstance(ex, LoadClientAppError):
            reason = "An exception was raised when attempting to load `ClientApp`"
            return ("error", int(ErrorCode.LOAD_CLIENT_APP_EXCEPTION), reason)
        reason = str(type(ex)) + ":<'" + str(ex) + "'>"
        return ("error", int(ErrorCode.CLIENT_APP_RAISED_EXCEPTION), reason)


def trace(message_type: str, times: dict[str, float]) -> None:
    """With ``FL_APP_EXECUTOR_TRACE`` set to a file, append the task's wall-clock
    times (acquired, pulled, to and from the worker, pushed) as a JSON line: the
    node's share of a deployed round (``docs/performance.md``)."""
    path = os.environ.get(TRACE_ENV)
    if path:
        line = json.dumps({"pid": os.getpid(), "type": message_type, **times})
        with open(path, "a", encoding="utf-8") as file:
            file.write(line + "\n")


class WorkerDied(RuntimeError):
    """The worker process ended while it held a message."""


# --------------------------------------------------------------------- the executor
@dataclass
class Worker:
    """A worker process, the FAB it serves and whether it holds a message."""

    process: multiprocessing.process.BaseProcess
    conn: Connection
    fab_hash: str | None  # None: started ahead, not bound to an app yet
    busy: bool = False
    loaded: bool = False  # it has the FAB installed and its ClientApp loaded

    def call(self, job: dict[str, Any]) -> tuple[Any, ...]:
        """The worker's answer to ``job``; WorkerDied if it ends first."""
        if self.loaded:
            job = {**job, "fab_content": b""}
        try:
            self.conn.send(job)
            while not self.conn.poll(0.1):
                if not self.process.is_alive():
                    raise WorkerDied(f"worker {self.process.pid} ended")
            answer = self.conn.recv()
        except (EOFError, OSError) as error:
            raise WorkerDied(f"worker {self.process.pid}: {error}") from error
        self.loaded = True
        return answer


@dataclass
class WarmExecutor:
    """Flower's ``Executor`` protocol (``flwr.supercore.superexec.executor``):
    ClientApp tasks served here with warm workers, everything else by the stock
    executor."""

    address: str
    certificates: bytes | None
    preload: tuple[str, ...] = ()
    workers: list[Worker] = field(default_factory=list)

    def __post_init__(self) -> None:
        from flwr.supercore.superexec.executor import SubprocessExecutor

        self.stock = SubprocessExecutor()
        self.spawn = multiprocessing.get_context("spawn")
        self.lock = threading.Lock()
        self.tasks = ThreadPoolExecutor(MAX_TASKS, thread_name_prefix="task")
        self.workers.append(self._start_worker(None))  # ready for the first message

    def get_eligible_capacity(
        self, supported_task_types: set[Any], **_: Any
    ) -> tuple[set[Any], set[str]]:
        return supported_task_types, set()

    def wait_for_capacity(self, *_: Any, **__: Any) -> None:
        return None

    def launch(self, spec: Any) -> Any:
        from flwr.supercore.constant import TaskType
        from flwr.supercore.superexec.executor import LaunchResult

        if spec.task_type != TaskType.CLIENT_APP:
            return self.stock.launch(spec)
        self.tasks.submit(self.serve, spec.token)
        return LaunchResult.accepted()

    def serve(self, token: str) -> None:
        """One task as ``flwr-clientapp`` serves it (``run_clientapp``), its
        ClientApp called in a warm worker. A worker that dies holding the message
        gives Flower's error reply, and the task ends as failed, at once."""
        from flwr.app import Message
        from flwr.app.error import Error
        from flwr.common.constant import ErrorCode, SubStatus
        from flwr.common.serde import (
            context_from_proto,
            context_to_proto,
            message_from_proto,
            message_to_proto,
        )
        from flwr.proto.message_pb2 import Context as ContextProto
        from flwr.proto.message_pb2 import Message as MessageProto
        from flwr.supercore import log
        from flwr.supercore.heartbeat import (
            HeartbeatSender,
            make_task_heartbeat_fn_http,
        )
        from flwr.supercore.task_identity import TaskIdentity
        from flwr.supernode.runtime.run_clientapp import (
            pull_task_input,
            push_message,
            push_task_output,
        )

        times = {"acquired": time.time()}
        client, retry_invoker = runtime_client(token, self.address, self.certificates)
        heartbeat = HeartbeatSender(make_task_heartbeat_fn_http(client))
        message = reply = context = worker = None
        sub_status, details = SubStatus.FAILED, "ClientApp task failed"
        try:
            heartbeat.start()
            message, context, run, fab = pull_task_input(client)
            times["pulled"] = time.time()
            worker = self._worker(fab.hash_str)
            times["to_worker"] = time.time()
            answer = worker.call(
                {
                    "task_id": TaskIdentity.task_id,
                    "run_id": run.run_id,
                    "node_id": context.node_id,
                    "message": message_to_proto(message).SerializeToString(),
                    "message_id": message.metadata.message_id,
                    "context": context_to_proto(context).SerializeToString(),
                    "fab_hash": fab.hash_str,
                    "fab_id": run.fab_id,
                    "fab_version": run.fab_version,
                    "fab_content": fab.content,
                }
            )
            times["from_worker"] = time.time()
            if answer[0] == "reply":
                reply = message_from_proto(MessageProto.FromString(answer[1]))
                context = context_from_proto(ContextProto.FromString(answer[2]))
                sub_status, details = SubStatus.COMPLETED, ""
            else:
                _, code, details = answer
                reply = Message(Error(code=code, reason=details), reply_to=message)
        except Exception as ex:
            details = str(type(ex)) + ":<'" + str(ex) + "'>"
            log(ERROR, "warm executor: %s", details)
            if message is not None:
                error = Error(
                    code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=details
                )
                reply = Message(error, reply_to=message)
        finally:
            try:
                if reply is not None and context is not None:
                    push_message(client, reply, context)
            except Exception as ex:
                log(ERROR, "Failed to push reply message", exc_info=ex)
            retry_invoker.max_tries = 1
            push_task_output(
                client=client, context=context, sub_status=sub_status, details=details
            )
            heartbeat.stop()
            client.close()
            times["pushed"] = time.time()
            if message is not None:
                trace(message.metadata.message_type, times)
            if worker is not None:
                with self.lock:
                    worker.busy = False

    def _worker(self, fab_hash: str) -> Worker:
        """An idle live worker of this FAB, else one not bound yet (bound now),
        else a new one; marked busy."""
        with self.lock:
            self.workers = [w for w in self.workers if w.process.is_alive()]
            idle = [w for w in self.workers if not w.busy]
            chosen = next((w for w in idle if w.fab_hash == fab_hash), None)
            if chosen is None:
                chosen = next((w for w in idle if w.fab_hash is None), None)
            if chosen is None:
                chosen = self._start_worker(None)
                self.workers.append(chosen)
            new = chosen.fab_hash != fab_hash  # just started, or bound now
            chosen.fab_hash, chosen.busy = fab_hash, True
        if new:
            from flwr.supercore import log

            pid, fab = chosen.process.pid, fab_hash[:8]
            log(INFO, "warm executor: worker %s for FAB %s", pid, fab)
        return chosen

    def _start_worker(self, fab_hash: str | None) -> Worker:
        parent, child = multiprocessing.Pipe()
        process = self.spawn.Process(
            target=worker_main,
            args=(child, self.preload),
            name="warm-clientapp",
            daemon=True,
        )
        process.start()
        child.close()
        if parent.recv() != READY:  # the worker imported Flower and is listening
            raise RuntimeError("a warm ClientApp worker did not start")
        return Worker(process, parent, fab_hash)

    def reconcile(self) -> None:
        """Nothing to maintain: dead workers are dropped when the next task comes."""

    def close(self) -> None:
        self.tasks.shutdown(wait=False, cancel_futures=True)
        for worker in self.workers:
            worker.conn.close()
            worker.process.kill()
        self.stock.close()


# --------------------------------------------------------------------- the command
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m fl_app.launch.warm_executor",
        description="flower-superexec with warm ClientApps (see the module doc).",
    )
    parser.add_argument("--runtime-api-address", required=True)
    security = parser.add_mutually_exclusive_group(required=True)
    security.add_argument("--insecure", action="store_true")
    security.add_argument("--root-certificates", metavar="ROOT_CERT")
    parser.add_argument("--parent-pid", type=int, default=None)
    parser.add_argument(
        "--preload",
        action="append",
        default=[],
        metavar="MODULE",
        help="a third-party module each worker imports before its first message "
        "(e.g. torch); repeatable",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    os.environ.setdefault("FLWR_SUPEREXEC_TASK_POLL_INTERVAL", TASK_POLL_INTERVAL_S)
    from flwr.supercore.tls import validate_and_resolve_root_certificates

    superexec = importlib.import_module("flwr.supercore.superexec.run_superexec")

    certificates = validate_and_resolve_root_certificates(
        args.root_certificates, args.insecure
    )
    executor = WarmExecutor(
        args.runtime_api_address, certificates, preload=tuple(args.preload)
    )
    # Flower's loop, with this executor in place of the one it would build.
    superexec.get_executor = lambda *_, **__: executor
    superexec.run_superexec(
        runtime_api_address=args.runtime_api_address,
        insecure=args.insecure,
        root_certificates_path=args.root_certificates,
        parent_pid=args.parent_pid,
    )


if __name__ == "__main__":
    sys.exit(main())
