"""Several learners and the task's baselines on the same traces (`dgpg compare`): each
algorithm trained into its own run directory, the baselines evaluated on the final
episodes of the same seeds, one table, one plot and summary.json."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import jax

from dgpg_jax import registry, rundir, train
from dgpg_jax.evaluate import evaluate_policies, seed_keys
from dgpg_jax.runlog import FINAL_WINDOW, RunResult, json_safe
from dgpg_jax.runner import run_training
from dgpg_jax.task import Task

RUN_FIELDS = ("episodes_to_converge", "wall_seconds", "compile_seconds")


def final_baselines(task: Task, policies: list[tuple[str, Callable]], run_keys: jax.Array, episodes: int) -> list[dict]:
    """`evaluate_policies` rows of `policies` on the traces of the final FINAL_WINDOW
    episodes of `episodes`-episode runs of `run_keys` (the episodes that a run's final
    figures pool), pooled over the runs."""
    window = min(FINAL_WINDOW, episodes)
    traces = jax.vmap(train.traces_key)(run_keys)
    return evaluate_policies(policies, task, traces, window, episodes - window)


def learned_row(result: RunResult) -> dict:
    """A trained run as a row beside the baselines': its pooled final metrics."""
    summary = result.summary()
    pooled = {key.removeprefix("final_"): value for key, value in summary.items()
              if key.startswith("final_") and not key.endswith("_per_seed")}
    return {"policy": result.config.algo, **pooled, **{key: summary[key] for key in RUN_FIELDS}}


def run_compare(configs: list[train.TrainConfig], seed: int, num_seeds: int, out_dir: Path | str,
                episodes_per_call: int = 1, on_progress: Callable | None = None, log: str = "none",
                overwrite: bool = False, plotted: tuple = (), ylabel: str = "cost / reference",
                title: str = "") -> tuple[dict[str, RunResult], list[dict]]:
    """Train each config (one per algorithm, the same task and episodes) on seeds 0..S-1 of
    `seed` into out_dir/<algo>, then evaluate the task's baselines on the same final
    episodes. Writes compare.json first, then summary.json (the table) and
    learning_curves.png (the learners' curves, the `plotted` baselines as levels).
    `on_progress(algo, done, logs)` follows each run (done = 0 before it compiles).
    Returns ({algo: RunResult}, table rows: learners first, then baselines)."""
    from dgpg_jax.plots import plot_learning_curves

    algos = [config.algo for config in configs]
    episodes = configs[0].num_episodes
    with rundir.open_run(out_dir, "compare", overwrite=overwrite) as out:
        for algo in algos:  # each algorithm's run directory, refused before anything is trained
            rundir.check_out(out / algo, "train", overwrite=overwrite)
        rundir.write_json(out / "compare.json", {"algos": algos, "seed": seed, "seeds": num_seeds,
                                                 "episodes": episodes, "task": registry.task_name(configs[0].env)})
        results = {}
        for config in configs:
            progress = None if on_progress is None else (lambda done, logs, a=config.algo: on_progress(a, done, logs))
            if progress is not None:
                progress(0, None)
            results[config.algo] = run_training(config, seed, num_seeds, out / config.algo, None, episodes_per_call,
                                                progress, log, overwrite)
        task = results[algos[0]].task
        rows = final_baselines(task, list(task.baselines.items()), seed_keys(seed, num_seeds), episodes)
        table = [learned_row(result) for result in results.values()] + rows
        plot_learning_curves({a: r.logs.ratio_to_reference for a, r in results.items()},
                             {r["policy"]: r[task.ratio_key] for r in rows if r["policy"] in plotted},
                             out / "learning_curves.png", title, task.reference_name, ylabel)
        rundir.write_json(out / "summary.json", json_safe(table))
    return results, table
