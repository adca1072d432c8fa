"""Host-side driver of a training run: jitted calls of a few episodes for seeds in
parallel, a progress callback between calls, metrics files, checkpoints and resume.

The training itself stays one XLA program per call (`train.train_episodes`, vmapped
over seeds); calls of K episodes give the same numbers as calls of any other length.
"""

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Callable

import jax
import numpy as np

from dgpg_jax import checkpoint, configs, memory, rundir, trackers, train
from dgpg_jax.evaluate import episodes_to_converge, ratio_of_means, seed_keys
from dgpg_jax.task import Task
from dgpg_jax.validation import check_integer, check_seeds

FINAL_WINDOW = 3  # episodes pooled for "final" figures, the same window as episodes_to_converge


def _window(logs: train.EpisodeLog, window: int) -> train.EpisodeLog:
    return jax.tree.map(lambda x: x[:, -window:], logs)


@dataclasses.dataclass
class RunResult:
    config: train.TrainConfig
    task: Task
    logs: train.EpisodeLog  # numpy leaves, each [seeds, episodes, ...]
    runner: train.RunnerState  # [seeds]-batched
    wall_seconds: float
    compile_seconds: float

    def summary(self) -> dict:
        """One-line summary. "Final" figures pool the last FINAL_WINDOW episodes of every
        seed (`task.pool`; for cloud scheduling the mean and percentiles of those jobs, in
        mean job times) under `final_<metric>`, the reference's under
        `<reference>_final_<metric>`, and the ratio of the pooled costs on the same traces
        as `final_ratio_to_reference` (also `final_ratio_to_<reference>`)."""
        task, name = self.task, self.task.reference_name
        seeds, episodes = self.logs.ratio_to_reference.shape
        final = _window(self.logs, min(FINAL_WINDOW, episodes))
        learned, reference = task.pool(final.metrics), task.pool(final.reference)
        per_seed = [ratio_of_means(task, jax.tree.map(lambda x: x[s], final.metrics),
                                   jax.tree.map(lambda x: x[s], final.reference)) for s in range(seeds)]
        ratio = learned[task.cost_key] / reference[task.cost_key]
        return {
            "task": task.name, "algo": self.config.algo, "num_agents": self.config.env.num_agents,
            "episodes": episodes, "seeds": seeds,
            **{f"final_{key}": value for key, value in learned.items()},
            **{f"{name}_final_{key}": value for key, value in reference.items()},
            "final_ratio_to_reference": ratio, f"final_{task.ratio_key}": ratio,
            "final_ratio_to_reference_per_seed": per_seed, f"final_{task.ratio_key}_per_seed": per_seed,
            "episodes_to_converge": float(episodes_to_converge(self.logs.ratio_to_reference).mean()),
            "wall_seconds": self.wall_seconds, "compile_seconds": self.compile_seconds,
        }


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
            stacked = _concatenate(parts)
            if sinks:  # before the checkpoint: a crash in between repeats points rather than losing them
                trackers.write_episodes(sinks, log_columns(parts[-1], task), done - count, task.reference_name)
            if out_dir is not None:  # metrics first: they always cover the newest checkpoint
                write_metrics(Path(out_dir) / "metrics.jsonl", stacked, task)
                checkpoint.save_runner(out_dir, runner, done)
            if on_progress is not None:
                on_progress(done, stacked)
    finally:
        trackers.close_trackers(sinks)
    return RunResult(config, task, _concatenate(parts), runner, time.perf_counter() - start, compile_seconds)


def _concatenate(parts: list[train.EpisodeLog]) -> train.EpisodeLog:
    return jax.tree.map(lambda *xs: np.concatenate(xs, axis=1), *parts)


def _renamed(field: str, task: Task) -> str:
    """Column name of a learner quantity: the ratio is named after the task's reference."""
    return task.ratio_key if field == "ratio_to_reference" else field


def metric_columns(metrics, reference, task: Task) -> dict[str, np.ndarray]:
    """Flat columns of a policy's metrics and the reference's on the same episodes: the
    metrics under their own names, the reference's prefixed with its name (`best_fit_`,
    `valley_`). The inverse is `metrics_from_columns`."""
    columns = dict(metrics.__dict__)
    columns.update({f"{task.reference_name}_{name}": value for name, value in reference.__dict__.items()})
    return columns


def metrics_from_columns(columns: dict[str, np.ndarray], task: Task) -> tuple:
    """(metrics, reference) of the task's metrics type from `metric_columns`' columns."""
    metrics_type = type(jax.eval_shape(lambda: task.reference(task.params, jax.random.key(0))))
    fields = [f.name for f in dataclasses.fields(metrics_type)]
    return (metrics_type(**{name: columns[name] for name in fields}),
            metrics_type(**{name: columns[f"{task.reference_name}_{name}"] for name in fields}))


def log_columns(logs: train.EpisodeLog, task: Task) -> dict[str, np.ndarray]:
    """Flat columns of a log: `metric_columns`, then the learner's quantities, the ratio as
    `ratio_to_<reference>`. The inverse is `log_from_columns`."""
    columns = metric_columns(logs.metrics, logs.reference, task)
    columns.update({_renamed(name, task): getattr(logs, name) for name in train.EpisodeLog._fields[2:]})
    return columns


def log_from_columns(columns: dict[str, np.ndarray], task: Task) -> train.EpisodeLog:
    metrics, reference = metrics_from_columns(columns, task)
    return train.EpisodeLog(metrics=metrics, reference=reference,
                            **{name: columns[_renamed(name, task)] for name in train.EpisodeLog._fields[2:]})


def write_metrics(path: Path, logs: train.EpisodeLog, task: Task) -> None:
    """metrics.jsonl: one JSON object per (seed, episode), episodes 1-based, histograms as
    lists; replaced atomically."""
    columns = log_columns(logs, task)
    seeds, episodes = logs.ratio_to_reference.shape
    lines = []
    for s in range(seeds):
        for e in range(episodes):
            row = {name: np.asarray(value[s, e]).tolist() for name, value in columns.items()}
            lines.append(json.dumps({"seed": s, "episode": e + 1, **row}) + "\n")
    rundir.write_atomic(path, "".join(lines))


def read_metrics(path: Path, task: Task, num_seeds: int, episodes: int) -> train.EpisodeLog:
    """The first `episodes` episodes of every seed from a metrics.jsonl; ValueError naming
    the file (and the line) when it is damaged or short."""
    damaged = "allowed a metrics.jsonl written by `dgpg train`, or --overwrite (without --resume) to start again"
    rows = []
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        try:
            row = json.loads(line) if line.strip() else None
        except json.JSONDecodeError:
            raise ValueError(f"resume: {path} line {number} is not valid JSON (a damaged file): {damaged}") from None
        if row is not None and not (isinstance(row, dict) and {"seed", "episode"} <= set(row)):
            raise ValueError(f"resume: {path} line {number} is not a metrics row: {damaged}")
        if row is not None and row["episode"] <= episodes:
            rows.append(row)
    rows.sort(key=lambda row: (row["seed"], row["episode"]))
    if [(row["seed"], row["episode"]) for row in rows] != [(s, e + 1) for s in range(num_seeds)
                                                           for e in range(episodes)]:
        raise ValueError(f"resume: {path} holds {len(rows)} rows of the first {episodes} episodes: "
                         f"allowed {num_seeds * episodes} ({num_seeds} seeds, each episode once); {damaged}")
    try:
        columns = {}
        for name in (name for name in rows[0] if name not in ("seed", "episode")):
            values = np.array([row[name] for row in rows])  # JSON gives back the float32 values exactly
            values = values.astype(np.int32 if values.dtype.kind == "i" else np.float32)
            columns[name] = values.reshape((num_seeds, episodes) + values.shape[1:])
        return log_from_columns(columns, task)
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"resume: {path} does not hold this task's metrics ({type(error).__name__}: {error}): "
                         f"{damaged}") from None


def json_safe(value):
    """`value` with NaN and infinities as None (JSON has no NaN) and numpy scalars as Python
    numbers, through dicts, lists and tuples."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value
