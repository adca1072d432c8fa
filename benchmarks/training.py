"""Training speed: compile and per-episode time against N (both presets), throughput
against seeds at N = 200, and the `dgpg train` command cold and with its compilation cache.

- vs N: `runner.run_training` of DG-PG, 1 seed, 2 episodes; compile seconds (XLA's, of the
  init and the one-episode program) and seconds per episode after compiling.
- vs seeds: the same at N = 200 (default preset) for S seeds at once: seed-episodes and
  job-steps (jobs dispatched) per second, and the process's peak RSS so far (it only
  grows, so read it along the rows).
- the command: `dgpg train --num-agents 200 --episodes 20 --seeds 1` in a fresh process,
  once with an empty compilation cache and once with the cache it filled.

    python benchmarks/training.py           # N in {5, 20, 50, 200, 500, 1000, 1500}, seeds in {1, 8, 64, 512}
    python benchmarks/training.py --quick   # N in {5, 200}, seeds in {1, 8}

Seed counts run 1 episode each (2 for the rows against N).

Writes benchmarks/results/training.{json,md}. Run it alone: timings on a shared CPU are
upper bounds.
"""

import argparse
import datetime
import json
import os
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import machine
from dgpg_jax import memory, runner, train
from dgpg_jax import registry
from dgpg_jax.tasks.cloud import CloudConfig

PRESETS = registry.presets(CloudConfig)

RESULTS = Path(__file__).parent / "results"


def config_for(preset: str, num_agents: int, episodes: int) -> train.TrainConfig:
    env_overrides, train_overrides = PRESETS[preset]
    return train.TrainConfig(env=CloudConfig(num_agents=num_agents, **env_overrides), num_episodes=episodes,
                             **train_overrides)


def timed_run(config: train.TrainConfig, seeds: int) -> dict:
    """Compile seconds, seconds per episode after compiling, and throughput of one run."""
    result = runner.run_training(config, seed=0, num_seeds=seeds)
    run_seconds = result.wall_seconds - result.compile_seconds
    episodes = config.num_episodes
    jobs = float(np.sum(result.logs.metrics.num_jobs))
    return {"compile_seconds": result.compile_seconds, "wall_seconds": result.wall_seconds,
            "seconds_per_episode": run_seconds / episodes,
            "seed_episodes_per_second": seeds * episodes / run_seconds,
            "job_steps_per_second": jobs / run_seconds,
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def command_times() -> dict:
    """`dgpg train` N = 200, 20 episodes, 1 seed: a fresh process with an empty cache, then
    the same command with the cache it filled."""
    argv = [sys.executable, "-m", "dgpg_jax.cli", "train", "--num-agents", "200", "--episodes", "20", "--seeds", "1",
            "--json"]
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("cold", "cached"):
            start = time.perf_counter()
            subprocess.run(argv + ["--out", f"{tmp}/{name}"], check=True, capture_output=True,
                           env={**os.environ, "DGPG_COMPILATION_CACHE": f"{tmp}/cache"})
            out[f"{name}_seconds"] = time.perf_counter() - start
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    sizes = (5, 200) if args.quick else (5, 20, 50, 200, 500, 1000, 1500)
    seed_counts = (1, 8) if args.quick else (1, 8, 64, 512)
    rows = []
    for preset in ("default", "paper"):
        for n in sizes:
            row = {"benchmark": "vs_n", "preset": preset, "num_agents": n, "seeds": 1, **timed_run(
                config_for(preset, n, 2), 1)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    for seeds in seed_counts:
        row = {"benchmark": "vs_seeds", "preset": "default", "num_agents": 200, "seeds": seeds,
               **timed_run(config_for("default", 200, 1), seeds)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    command = {"benchmark": "command", **command_times()}
    print(json.dumps(command), flush=True)
    meta = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": f"{machine.describe()}, "
                       f"{memory.available_bytes() / 2**30:.0f} GiB free",
            "command": "python " + " ".join(shlex.quote(a) for a in sys.argv)}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "training.json").write_text(json.dumps({"meta": meta, "rows": rows, "command": command}, indent=1))
    lines = [f"# Training speed ({meta['date']})", "", f"Machine: {meta['machine']}. Command: `{meta['command']}`.", "",
             "| preset | N | seeds | compile s | s / episode | seed-episodes / s | job-steps / s | peak RSS GiB |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['preset']} | {r['num_agents']} | {r['seeds']} | {r['compile_seconds']:.1f} | "
                     f"{r['seconds_per_episode']:.2f} | {r['seed_episodes_per_second']:.2f} | "
                     f"{r['job_steps_per_second']:.0f} | {r['peak_rss_gib']:.2f} |")
    lines += ["", f"`dgpg train --num-agents 200 --episodes 20 --seeds 1`: {command['cold_seconds']:.1f} s cold, "
              f"{command['cached_seconds']:.1f} s with its compilation cache."]
    (RESULTS / "training.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
