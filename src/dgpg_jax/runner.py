"""Host-side driver of a training run: jitted chunks of episodes for seeds in parallel, a
progress callback between chunks, metrics files, checkpoints and resume.

The training itself stays one XLA program per chunk (`train.train_episodes`, vmapped
over seeds); a chunk of K episodes gives the same numbers as any other chunking.
"""

import dataclasses
import json
import time
from pathlib import Path
from typing import Callable

import jax
import numpy as np

from dgpg_jax import checkpoint, train
from dgpg_jax.evaluate import episodes_to_converge, seed_keys

FINAL_WINDOW = 3  # episodes averaged for "final" figures, the same window as episodes_to_converge


@dataclasses.dataclass
class RunResult:
    config: train.TrainConfig
    logs: dict[str, np.ndarray]  # EpisodeLog fields, each [seeds, episodes]
    runner: train.RunnerState  # [seeds]-batched
    wall_seconds: float
    compile_seconds: float

    def summary(self, num_seeds: int) -> dict:
        """One-line summary: final figures are means over seeds of the last FINAL_WINDOW episodes."""
        final = lambda name: float(self.logs[name][:, -FINAL_WINDOW:].mean())  # noqa: E731
        return {
            "algo": self.config.algo, "num_agents": self.config.env.num_agents, "episodes": self.config.num_episodes,
            "seeds": num_seeds,
            "final_mean_response_time": final("mean_response_time"),
            "final_mean_response_time_in_jobs": final("mean_response_time_in_jobs"),
            "final_p95_response_time": final("p95_response_time"),
            "final_p99_response_time": final("p99_response_time"),
            "final_p95_response_time_in_jobs": final("p95_response_time") / self.config.env.mean_job_steps,
            "final_p99_response_time_in_jobs": final("p99_response_time") / self.config.env.mean_job_steps,
            "final_ratio_to_best_fit": final("ratio_to_best_fit"),
            "episodes_to_converge": float(episodes_to_converge(self.logs["ratio_to_best_fit"]).mean()),
            "wall_seconds": self.wall_seconds, "compile_seconds": self.compile_seconds,
        }


def run_training(config: train.TrainConfig, seed: int, num_seeds: int, out_dir: Path | None = None,
                 resume: Path | None = None, chunk_episodes: int = 1,
                 on_chunk: Callable[[int, dict[str, np.ndarray]], None] | None = None) -> RunResult:
    """Train `num_seeds` seeds of `config` in chunks of `chunk_episodes` episodes.

    With `resume`, continue the run saved there (same config but for num_episodes, same
    seeds) up to config.num_episodes. With `out_dir`, write config.json, metrics.jsonl and
    the checkpoint after every chunk. `on_chunk(episodes_done, logs_so_far)` is called
    between chunks (progress bars)."""
    if not (isinstance(chunk_episodes, int) and chunk_episodes >= 1):
        raise ValueError(f"chunk_episodes={chunk_episodes!r} is invalid: allowed an integer >= 1")
    learner = train.make_learner(config)
    if resume is not None:
        checkpoint.check_resumable(checkpoint.load_config(resume), (config, seed, num_seeds))
    keys = seed_keys(seed, num_seeds)
    hyper = train.default_hyper(config)
    start = time.perf_counter()
    init = jax.jit(jax.vmap(lambda k: train.init_runner(learner, k, hyper)))
    runner = init(keys)
    logs: dict[str, list[np.ndarray]] = {name: [] for name in train.EpisodeLog._fields}
    if resume is not None:
        runner = checkpoint.load_runner(resume, runner)
        previous = _read_metrics(Path(resume) / "metrics.jsonl", num_seeds, int(runner.episode[0]))
        for name in logs:
            logs[name].append(previous[name])
    if out_dir is not None:
        checkpoint.save_config(out_dir, config, seed, num_seeds)
    compiled: dict[int, Callable] = {}
    compile_seconds = 0.0
    done = int(runner.episode[0])
    while done < config.num_episodes:
        count = min(chunk_episodes, config.num_episodes - done)
        if count not in compiled:
            t0 = time.perf_counter()
            chunk = jax.jit(jax.vmap(lambda r, k, n=count: train.train_episodes(learner, r, k, hyper, n)))
            compiled[count] = chunk.lower(runner, keys).compile()
            compile_seconds += time.perf_counter() - t0
        runner, chunk_logs = compiled[count](runner, keys)
        for name, value in chunk_logs._asdict().items():
            logs[name].append(np.asarray(value))
        done += count
        stacked = {name: np.concatenate(parts, axis=1) for name, parts in logs.items()}
        if out_dir is not None:
            _write_metrics(Path(out_dir) / "metrics.jsonl", stacked)
            checkpoint.save_runner(out_dir, runner)
        if on_chunk is not None:
            on_chunk(done, stacked)
    stacked = {name: np.concatenate(parts, axis=1) for name, parts in logs.items()}
    return RunResult(config, stacked, runner, time.perf_counter() - start, compile_seconds)


def _write_metrics(path: Path, logs: dict[str, np.ndarray]) -> None:
    seeds, episodes = next(iter(logs.values())).shape
    with open(path, "w") as f:
        for s in range(seeds):
            for e in range(episodes):
                f.write(json.dumps({"seed": s, "episode": e + 1, **{k: float(v[s, e]) for k, v in logs.items()}}) + "\n")


def _read_metrics(path: Path, num_seeds: int, episodes: int) -> dict[str, np.ndarray]:
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    out = {name: np.zeros((num_seeds, episodes), np.float32) for name in train.EpisodeLog._fields}
    for row in rows:
        if row["episode"] <= episodes:
            for name in out:
                out[name][row["seed"], row["episode"] - 1] = row[name]
    return out
