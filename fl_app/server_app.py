"""The Flower ServerApp: read the run config once, build the named strategy, go.

Results land in ``<output-dir>/<timestamp>-run<id>/`` (and ``<output-dir>/latest``).
With ``resume = true`` the run continues the folder ``resume-dir`` (default
``<output-dir>/latest``) from its last checkpoint, and appends to its history; the
folder's ``resume.toml`` is that run config, ready for ``flwr run --run-config``.
Loading this module imports no torch, so ``reproducible = true`` can still pin the
kernels of this process (``fl_app.kernels``).

Three loops run the strategies: Flower's legacy server loop (``start_grid``, which
honours ``round-timeout``); with ``secagg.enabled``, Flower's ``DefaultWorkflow``
whose fit step is ``SecAggPlusWorkflow``: clients mask their updates, and what
reaches the strategy's ``aggregate_fit`` is only their sum; and for FedBuff, which
has no synchronous rounds, its own asynchronous loop (``strategies.async_rounds``).
"""

from __future__ import annotations

from logging import INFO

from flwr.common import Context, log
from flwr.server import (
    Grid,
    LegacyContext,
    ServerApp,
    ServerAppComponents,
    ServerConfig,
)
from flwr.server.compat import start_grid
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow

from fl_app.checkpoint import CHECKPOINT_FILE, load_checkpoint, write_resume_file
from fl_app.config import RunConfig
from fl_app.grid import with_shared_poller
from fl_app.kernels import pin_kernels


def server_fn(context: Context) -> ServerAppComponents:
    """The strategy (fresh, or resumed from its checkpoint) and the loop's config."""
    return components(RunConfig.from_flower(context.run_config), context.run_id)


def components(config: RunConfig, run_id: int) -> ServerAppComponents:
    if config.reproducible:
        pin_kernels()
    # Imported now, not with this module: torch reads its kernel settings when it
    # loads (fl_app.kernels), and the strategies and results import torch.
    import torch

    from fl_app.results import new_run_dir
    from strategies import strategy_class

    # One thread, as each client trains: the central evaluation then gives the same
    # numbers on any number of cores, and, overlapping the next round
    # (strategies.base: overlaps_recording), leaves the other cores to the clients.
    torch.set_num_threads(1)

    kind = strategy_class(config)  # checked before any folder is made
    state = None
    if config.resume:
        run_dir = config.run_to_resume()
        state = load_checkpoint(run_dir / CHECKPOINT_FILE, config)  # checks first
        log(INFO, "resuming %s after round %s", run_dir, state["round"])
    else:
        run_dir = new_run_dir(config.output_dir, run_id)
    log(INFO, "results of this run go to %s", run_dir)
    write_resume_file(run_dir, config)
    strategy = kind(config, run_dir)
    if state is not None:
        strategy.load_state_dict(state)
    # Flower counts this run's rounds from 1; the strategy adds the rounds done.
    rounds_left = max(config.num_server_rounds - strategy.round_offset, 0)
    server_config = ServerConfig(
        num_rounds=rounds_left,
        round_timeout=config.round_timeout or None,
    )
    return ServerAppComponents(strategy=strategy, config=server_config)


def secure_workflow(config: RunConfig) -> DefaultWorkflow:
    """Flower's default round, with SecAgg+ as its fit step (knobs: ``secagg.*``)."""
    secagg = config.secagg
    return DefaultWorkflow(
        fit_workflow=SecAggPlusWorkflow(
            num_shares=secagg.num_shares,
            reconstruction_threshold=secagg.reconstruction_threshold,
            # With central DP every client weighs 1 (and clips its own update).
            max_weight=1.0 if config.dp.central else secagg.max_weight,
            clipping_range=secagg.clipping_range,
            quantization_range=secagg.quantization_range,
            timeout=secagg.timeout,
        )
    )


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    config = RunConfig.from_flower(context.run_config)
    parts = components(config, context.run_id)
    if parts.strategy.asynchronous:  # type: ignore[union-attr] (FedBuff: its own loop)
        from strategies.async_rounds import run_buffered

        run_buffered(parts.strategy, grid, context.run_id)  # type: ignore[arg-type]
        return
    grid = with_shared_poller(grid)  # replies collected as they arrive, not every 3 s
    if not config.secagg.enabled:
        # Flower's loop: round t's evaluation and files may overlap round t+1.
        parts.strategy.overlap_records = True  # type: ignore[union-attr]
        start_grid(grid=grid, strategy=parts.strategy, config=parts.config)
        return
    legacy = LegacyContext(
        context=context, config=parts.config, strategy=parts.strategy
    )
    secure_workflow(config)(grid, legacy)
