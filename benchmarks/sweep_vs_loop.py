"""A sweep against a loop of single runs, side by side in one process.

The same runs (a grid of alpha x seeds, DG-PG, default preset) two ways:
- loop: one `runner.run_training(config_of_point, seed=s, num_seeds=1)` per (point, seed),
  what a user without the sweep engine writes; JAX's persistent compilation cache is on
  (in a temporary directory), so the loop compiles once and loads the program after;
- sweep: `sweep.run_sweep` over the same items: one program per chunk, all items vmapped,
  the Best-Fit reference once per seed.
Both walls include compiling; the ratio is loop / sweep.

    python benchmarks/sweep_vs_loop.py     # N in {20, 200}, alpha in {0.2, 0.6}, 4 seeds, 3 episodes

Writes benchmarks/results/sweep_vs_loop.{json,md}. Run it alone.
"""

import argparse
import datetime
import json
import tempfile
import time
from pathlib import Path

import jax

from dgpg_jax import runner, sweep, train
from dgpg_jax.tasks.cloud import CloudConfig
from machine import describe

RESULTS = Path(__file__).parent / "results"


def compare(num_agents: int, alphas: tuple[float, ...], seeds: int, episodes: int, tmp: Path) -> dict:
    base = train.TrainConfig(env=CloudConfig(num_agents=num_agents), num_episodes=episodes)
    spec = sweep.Sweep(base, algos=("dgpg",), num_agents=(num_agents,), grid={"alpha": alphas}, seeds=seeds)
    start = time.perf_counter()
    for point in spec.points():
        config = spec.point_config("dgpg", num_agents, point)
        for s in spec.seed_values:
            runner.run_training(config, seed=s, num_seeds=1, episodes_per_call=episodes)
    loop = time.perf_counter() - start
    start = time.perf_counter()
    result = sweep.run_sweep(spec, tmp / f"sweep-{num_agents}", bootstrap_reps=200)
    swept = time.perf_counter() - start
    group = result["groups"][0]
    return {"num_agents": num_agents, "runs": len(spec.points()) * seeds, "episodes": episodes,
            "loop_seconds": loop, "sweep_seconds": swept, "loop_over_sweep": loop / swept,
            "sweep_compile_seconds": group["compile_seconds"], "sweep_chunks": group["chunks"],
            "sweep_best_fit_references": group["references_run"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="20,200")
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--episodes", type=int, default=3)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        jax.config.update("jax_compilation_cache_dir", f"{tmp}/cache")
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
        for n in (int(x) for x in args.sizes.split(",")):
            rows.append(compare(n, (0.2, 0.6), args.seeds, args.episodes, Path(tmp)))
            print(json.dumps(rows[-1]), flush=True)
    command = f"python benchmarks/sweep_vs_loop.py --sizes {args.sizes} --seeds {args.seeds} " \
              f"--episodes {args.episodes}"
    machine = describe()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "sweep_vs_loop.json").write_text(json.dumps(
        {"date": datetime.date.today().isoformat(), "machine": machine, "command": command, "rows": rows},
        indent=2) + "\n")
    lines = ["# A sweep against a loop of single runs", "", f"Machine: {machine}. Command: `{command}`. "
             "DG-PG, alpha in {0.2, 0.6} x seeds; walls include compiling (the loop with a persistent "
             "compilation cache).", "", "| N | runs | episodes | loop s | sweep s | loop / sweep | sweep compile s |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['num_agents']} | {r['runs']} | {r['episodes']} | {r['loop_seconds']:.1f} | "
                     f"{r['sweep_seconds']:.1f} | {r['loop_over_sweep']:.2f} | {r['sweep_compile_seconds']:.1f} |")
    (RESULTS / "sweep_vs_loop.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
