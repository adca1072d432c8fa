"""Host-side driver of a training run: jitted calls of a few episodes for seeds in
parallel, a progress callback between calls, metrics files (`runlog`), checkpoints and
resume.

The training itself stays one XLA program per call (`train.train_episodes`, vmapped
over seeds); calls of K episodes give the same numbers as calls of any other length.
"""

import time
from pathlib import Path
from typing import Callable

import jax
import numpy as np

from dgpg_jax import checkpoint, configs, memory, rundir, trackers, train
from dgpg_jax.evaluate import seed_keys
from dgpg_jax.runlog import RunResult, concatenate, log_columns, read_metrics, write_metrics
from dgpg_jax.validation import check_integer, check_seeds

def run_training(config: train.TrainConfig, seed: int, num_seeds: int, out_dir: Path | None = None,
                 resume: Path | None = None, episodes_per_call: int = 1,
                 on_progress: Callable[[int, train.EpisodeLog], None] | None = None,
                 log: str = "none", overwrite: bool = False) -> RunResult:
    """Train `num_seeds` seeds of `config`, `episodes_per_call` episodes per jitted call.

    With `resume`, continue the run saved there (same config but for num_episodes, same
    seeds) from its newest complete checkpoint up to config.num_episodes. With `out_dir`
    (a `dgpg train` directory: `rundir.open_run`, locked while the run writes), write
    config.json, then after every call metrics.jsonl and a checkpoint; a directory
    holding a run is refused unless it is `resume` or `overwrite` is given (the old run's
    files are then removed once the new run has compiled). `on_progress(episodes_done,
    logs_so_far)` is called after every call (progress bars). `log` (one of
    `trackers.TRACKERS`) also sends each call's episodes to TensorBoard or W&B under
    out_dir/logs, one tracker run per seed. A file-system fault raises OSError naming the
    path, with the last checkpoint and its metrics intact."""
    check_integer("episodes_per_call", episodes_per_call)
    trackers.check_tracker(log)
    if log != "none" and out_dir is None:
        raise ValueError(f"log={log!r} is invalid without an output directory: allowed 'none', or an out_dir")
    learner = train.make_learner(config)  # the config validated first
    check_seeds(num_seeds, seed, learner.task.episode_rows)
    resumed: list[train.EpisodeLog] = []  # the resumed run's logs, read before anything compiles
    if resume is not None:
        start_episode = checkpoint.resume_point(Path(resume), (config, seed, num_seeds))
        if start_episode:
            resumed.append(read_metrics(Path(resume) / "metrics.jsonl", learner.task, num_seeds, start_episode))
    if out_dir is None:
        return _train(learner, seed, num_seeds, None, resume, resumed, False, episodes_per_call, on_progress, log)
    continues = resume is not None and Path(resume).resolve() == Path(out_dir).resolve()
    with rundir.open_run(out_dir, "train", continues, overwrite) as out_dir:
        return _train(learner, seed, num_seeds, out_dir, resume, resumed, continues, episodes_per_call, on_progress,
                      log)


def _train(learner: train.Learner, seed: int, num_seeds: int, out_dir: Path | None, resume: Path | None,
           parts: list[train.EpisodeLog], continues: bool, episodes_per_call: int,
           on_progress: Callable | None, log: str) -> RunResult:
    """`run_training` once its directory is open: `parts` holds the resumed episodes' logs."""
    config, task = learner.config, learner.task
    start_episode = parts[0].ratio_to_reference.shape[1] if parts else 0
    if out_dir is not None:
        try:  # a read-only checkpoint/ is refused now, not after compiling and training an episode
            checkpoint.check_writable(out_dir)
        except OSError as error:
            raise ValueError(f"out={str(out_dir)!r} is invalid: {rundir.describe_os_error(error)}; allowed a "
                             "writable directory") from None
    keys = seed_keys(seed, num_seeds)
    hyper = train.default_hyper(config)
    start = time.perf_counter()
    what = f"training {num_seeds} seeds at N={config.env.num_agents}"
    hint = "fewer --seeds or --num-agents"
    t0 = time.perf_counter()
    lowered = jax.jit(jax.vmap(lambda k: train.init_runner(learner, k, hyper))).lower(keys)
    init = lowered.compile()
    compile_seconds = time.perf_counter() - t0
    memory.check_fits(init, what, hint)
    compiled: dict[int, Callable] = {}

    def program(count: int):
        """The compiled call of `count` episodes, checked against the free memory."""
        nonlocal compile_seconds
        if count not in compiled:
            t0 = time.perf_counter()
            call = jax.jit(jax.vmap(lambda r, k, n=count: train.train_episodes(learner, r, k, hyper, n)))
            compiled[count] = call.lower(lowered.out_info, keys).compile()
            compile_seconds += time.perf_counter() - t0
            memory.check_fits(compiled[count], what, hint)
        return compiled[count]

    program(min(episodes_per_call, config.num_episodes - start_episode) or 1)  # refuse an oversized run first
    runner = init(keys)
    if start_episode:
        runner = checkpoint.load_runner(resume, runner)
    if out_dir is not None:
        if not continues:
            checkpoint.clear_run(out_dir)  # an overwritten run's files; nothing of it is mixed with this one
        checkpoint.save_config(out_dir, config, seed, num_seeds)
    done = start_episode
    sinks = [] if log == "none" else trackers.open_trackers(log, Path(out_dir) / "logs", [
        (f"seed_{s}", {**configs.config_to_dict(config, seed, num_seeds), "run": s}) for s in range(num_seeds)])
    try:
        while done < config.num_episodes:
            count = min(episodes_per_call, config.num_episodes - done)
            runner, logs = program(count)(runner, keys)
            parts.append(jax.tree.map(np.asarray, logs))
            done += count
            stacked = concatenate(parts)
            if sinks:  # before the checkpoint: a crash in between repeats points rather than losing them
                trackers.write_episodes(sinks, log_columns(parts[-1], task), done - count, task.reference_name)
            if out_dir is not None:  # metrics first: they always cover the newest checkpoint
                write_metrics(Path(out_dir) / "metrics.jsonl", stacked, task)
                checkpoint.save_runner(out_dir, runner, done)
            if on_progress is not None:
                on_progress(done, stacked)
    finally:
        trackers.close_trackers(sinks)
    return RunResult(config, task, concatenate(parts), runner, time.perf_counter() - start, compile_seconds)
