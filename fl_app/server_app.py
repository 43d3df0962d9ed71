"""The Flower ServerApp: read the run config once, build the named strategy, go.

Results land in ``<output-dir>/<timestamp>-run<id>/`` (and ``<output-dir>/latest``).
"""

from __future__ import annotations

from logging import INFO

from flwr.common import Context, log
from flwr.server import ServerApp, ServerAppComponents, ServerConfig

from fl_app.config import RunConfig
from fl_app.results import new_run_dir
from strategies import STRATEGIES


def server_fn(context: Context) -> ServerAppComponents:
    config = RunConfig.from_flower(context.run_config)
    run_dir = new_run_dir(config.output_dir, context.run_id)
    log(INFO, "results of this run go to %s", run_dir)
    strategy = STRATEGIES[config.strategy](config, run_dir)
    server_config = ServerConfig(
        num_rounds=config.num_server_rounds,
        round_timeout=config.round_timeout or None,
    )
    return ServerAppComponents(strategy=strategy, config=server_config)


app = ServerApp(server_fn=server_fn)
