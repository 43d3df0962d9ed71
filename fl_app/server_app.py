"""The Flower ServerApp: read the run config once, build the named strategy, go.

Results land in ``<output-dir>/<timestamp>-run<id>/`` (and ``<output-dir>/latest``).
With ``resume = true`` the run continues the folder ``resume-dir`` (default
``<output-dir>/latest``) from its last checkpoint, and appends to its history.
"""

from __future__ import annotations

from logging import INFO

from flwr.common import Context, log
from flwr.server import ServerApp, ServerAppComponents, ServerConfig

from fl_app.checkpoint import CHECKPOINT_FILE, load_checkpoint
from fl_app.config import RunConfig
from fl_app.results import new_run_dir
from strategies import STRATEGIES


def server_fn(context: Context) -> ServerAppComponents:
    config = RunConfig.from_flower(context.run_config)
    state = None
    if config.resume:
        run_dir = config.run_to_resume()
        state = load_checkpoint(run_dir / CHECKPOINT_FILE, config)  # checks first
        log(INFO, "resuming %s after round %s", run_dir, state["round"])
    else:
        run_dir = new_run_dir(config.output_dir, context.run_id)
    log(INFO, "results of this run go to %s", run_dir)
    strategy = STRATEGIES[config.strategy](config, run_dir)
    if state is not None:
        strategy.load_state_dict(state)
    # Flower counts this run's rounds from 1; the strategy adds the rounds done.
    rounds_left = max(config.num_server_rounds - strategy.round_offset, 0)
    server_config = ServerConfig(
        num_rounds=rounds_left,
        round_timeout=config.round_timeout or None,
    )
    return ServerAppComponents(strategy=strategy, config=server_config)


app = ServerApp(server_fn=server_fn)
