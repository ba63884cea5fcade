"""The Flower ServerApp: the round loop of federated AIM.

Every round: the sampled clients train on their videos and reply with their trainable state; the
replies are checked and the valid ones aggregated by the configured Flower strategy
(`server/strategy.py`); clients evaluate on held-out local videos every `client-eval-every` rounds;
the server evaluates on the config's val list every `central-eval-every` rounds; the round is
recorded and checkpointed (`server/run_state.py`). `resume=true` continues after the last
checkpointed round, and the result equals an uninterrupted run. A round that fewer than `min-nodes`
nodes answered within `round-timeout` ends the run after the last finished round, saying how to
continue it.
"""

from __future__ import annotations

import json
import os
from logging import ERROR, INFO

from flwr.app import Context
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

from aim_core.config import ConfigError
from aim_core.engine.step import adamw_step_scales
from aim_core.federated.settings import FederatedSettings, experiment_config, relative_paths
from server.client_sizes import ClientSizes
from server.run_state import FederatedRun
from server.strategy import RoundIncomplete, ValidatedRounds, build_strategy, strategy_state

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    settings = FederatedSettings.from_run_config(context.run_config)
    if relative := relative_paths(settings, experiment_config(settings)):
        raise ConfigError(f"relative paths in the run config: {', '.join(relative)}. This ServerApp runs in "
                          f"{os.getcwd()} (where the SuperLink started), not where flwr run was typed: give absolute "
                          "paths (aimfl simulate makes them absolute for you)")
    run = FederatedRun(settings)
    sizes = ClientSizes(settings, run.cfg, adamw_step_scales(run.model, run.cfg.schedule))
    if not sizes.by_node and len(nodes := list(grid.get_node_ids())) > len(sizes.videos):
        # a simulation: every SuperNode trains the partition of its partition-id, and the extra ones have none
        raise ConfigError(f"{len(nodes)} SuperNodes, but partition-dir={settings.partition_dir} holds "
                          f"{len(sizes.videos)} partitions (client_XXX.txt): run at most {len(sizes.videos)}")
    run.open()
    strategy = build_strategy(settings, run.strategy_state)
    rounds = ValidatedRounds(strategy, settings, sizes)
    arrays = run.global_arrays()
    log(INFO, "%s: rounds %d..%d of %d, %s trainable of %s parameters, %.2f MB per update (%s)",
        settings.strategy, run.rounds_done + 1, settings.last_round, settings.num_server_rounds,
        f"{run.counts['trainable_params']:,}", f"{run.counts['total_params']:,}", run.update_bytes() / 1e6,
        settings.update_codec)
    privacy_spent = getattr(strategy, "privacy_spent", lambda: None)

    for server_round in range(run.rounds_done + 1, settings.last_round + 1):
        log(INFO, "[ROUND %d/%d]", server_round, settings.num_server_rounds)
        try:
            trained = rounds.train(grid, server_round, arrays)
        except RoundIncomplete as err:
            finished = run.rounds_done
            log(ERROR, "run stopped: %s. The last finished round is %d (%s). Start the missing SuperNodes and run "
                       "again with resume=true to continue from round %d.", err, finished,
                run.ckpt_path if finished else "no checkpoint yet", finished + 1)
            return
        if trained.arrays is not None:
            arrays = trained.arrays
        evaluated = rounds.evaluate(grid, server_round, arrays)
        run.end_round(server_round, arrays, trained, evaluated, strategy_state(strategy), privacy_spent())

    summary = run.finish(privacy_spent())
    log(INFO, "done: %s", json.dumps({k: v for k, v in summary.items() if k != "central"}))
