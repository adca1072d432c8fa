"""A training run's logs on the host: the result and its one-line summary, the logs as
flat columns (metrics.jsonl, trackers, sweep chunks) and back, metrics.jsonl written and
read, and JSON without NaN."""

import dataclasses
import json
import math
from pathlib import Path

import jax
import numpy as np

from dgpg_jax import rundir, train
from dgpg_jax.evaluate import episodes_to_converge, ratio_of_means
from dgpg_jax.task import Task

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


def concatenate(parts: list[train.EpisodeLog]) -> train.EpisodeLog:
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
