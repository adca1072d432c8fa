"""Where one training episode's time goes: rollout, guidance, Best-Fit reference, update.

Each piece is its own jitted program, timed after compiling (median of --repeats, one
seed, default preset unless --preset paper):
- rollout: the T steps of the episode under the current policy, with the critic and
  DG-PG's guidance (`train._rollout_step` scanned over the day);
- guidance: the same rollout for MAPPO (no guidance) subtracted from it;
- best_fit: the Best-Fit reference on the episode's traces (`train.reference_metrics`);
- update: the updates_per_episode PPO updates on the episode's segments (`train._update`);
- episode: the whole `train.train_episodes(..., 1)`, to check that the parts add up.
XLA's cost analysis counts a loop body once, whatever its trip count, so the FLOPs and
bytes of a seed-episode are summed from programs without loops: one rollout step and one
Best-Fit step (times T), and one update at 1 epoch of 1 minibatch (the whole segment, times
epochs x updates per episode). They are set against the measured time and the CPU's
nominal peak (--peak-gflops: 2 cores x 2.6 GHz x 32 float32 FLOP per cycle (two 256-bit
FMA units) = 166 GFLOP/s on the 2-core AMD EPYC dev machine).

    python benchmarks/profile_episode.py                 # N in {20, 200, 1000}
    python benchmarks/profile_episode.py --sizes 200 --preset paper

Writes benchmarks/results/profile_episode.{json,md}. Run it alone.
"""

import argparse
import datetime
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from dgpg_jax import evaluate, train
from machine import describe
from dgpg_jax import registry
from dgpg_jax.tasks.cloud import CloudConfig

PRESETS = registry.presets(CloudConfig)

RESULTS = Path(__file__).parent / "results"


def config_for(preset: str, algo: str, num_agents: int) -> train.TrainConfig:
    env_overrides, train_overrides = PRESETS[preset]
    return train.TrainConfig(algo=algo, env=CloudConfig(num_agents=num_agents, **env_overrides), num_episodes=1,
                             **train_overrides)


def median_seconds(fn, args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))  # compiled and warm
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def rollout_program(learner: train.Learner):
    """(runner, key, hyper) -> the day's transitions, as in `train._run_episode`."""
    horizon = learner.task.params.horizon

    def rollout(runner, run_key, hyper):
        key = evaluate.episode_key(train.traces_key(run_key), runner.episode)
        reset_key, step_keys = evaluate.env_keys(key, horizon)
        task = train._task(learner, hyper)
        obs, state = task.reset(reset_key, task.params)
        return jax.lax.scan(lambda c, k: train._rollout_step(learner, runner, task, c, k), (state, obs),
                            (step_keys, evaluate.policy_keys(key, horizon)))[1][0]

    return jax.jit(rollout)


def update_program(learner: train.Learner):
    """(runner, transitions of the day) -> runner after the episode's PPO updates."""
    updates = learner.config.updates_per_episode

    def update(runner, traj, key):
        segments = jax.tree.map(lambda x: x.reshape((updates, -1) + x.shape[1:]), traj)

        def one(runner, inputs):
            segment, k = inputs
            bootstrap = segment.value[-1]  # any value: the cost does not depend on it
            return train._update(learner, runner, segment, bootstrap, jnp.float32(0.5), k)[0], None

        return jax.lax.scan(one, runner, (segments, jax.random.split(key, updates)))[0]

    return jax.jit(update)


def cost(jitted, *args) -> tuple[float, float]:
    """(FLOPs, bytes accessed) of a program, from XLA's cost analysis."""
    analysis = jitted.lower(*args).compile().cost_analysis()
    analysis = analysis[0] if isinstance(analysis, list) else analysis
    return float(analysis.get("flops", 0.0)), float(analysis.get("bytes accessed", 0.0))


def episode_cost(learner: train.Learner, runner, traj, key, hyper) -> tuple[float, float]:
    """(FLOPs, bytes) of one seed-episode, summed from loop-free programs (module docstring)."""
    config, horizon = learner.config, learner.task.params.horizon
    task = train._task(learner, hyper)
    env_params = task.params
    obs, state = task.reset(key, env_params)
    keys = (key, key)
    rollout = cost(jax.jit(lambda r, s, o, k: train._rollout_step(learner, r, task, (s, o), k)),
                   runner, state, obs, keys)
    best_fit = cost(jax.jit(lambda s, k: task.step(k, s, task.baselines["best_fit"](k, s, env_params), env_params)),
                    state, key)
    single = train.make_learner(config.__class__(**{**config.__dict__, "num_epochs": 1, "num_minibatches": 1}))
    segment = jax.tree.map(lambda x: x[: config.segment_steps], traj)
    update = cost(jax.jit(lambda r, t, k: train._update(single, r, t, t.value[-1], jnp.float32(0.5), k)[0]),
                  runner, segment, key)
    repeats = config.num_epochs * config.updates_per_episode
    return tuple(horizon * (a + b) + repeats * c for a, b, c in zip(rollout, best_fit, update))


def profile(preset: str, num_agents: int, repeats: int, peak_gflops: float) -> dict:
    row = {"preset": preset, "num_agents": num_agents}
    key = evaluate.seed_keys(0, 1)[0]
    for algo in ("dgpg", "mappo"):
        config = config_for(preset, algo, num_agents)
        learner = train.make_learner(config)
        hyper = train.default_hyper(config)
        runner = jax.jit(lambda k, h, learner=learner: train.init_runner(learner, k, h))(key, hyper)
        rollout = rollout_program(learner)
        row[f"rollout_{algo}_seconds"] = median_seconds(rollout, (runner, key, hyper), repeats)
        if algo == "mappo":
            continue
        traj = rollout(runner, key, hyper)
        row["update_seconds"] = median_seconds(update_program(learner), (runner, traj, key), repeats)
        reference = jax.jit(lambda k, h, learner=learner: train.reference_metrics(learner, k, h, jnp.int32(0), 1))
        row["best_fit_seconds"] = median_seconds(reference, (key, hyper), repeats)
        episode = jax.jit(lambda r, k, h, learner=learner: train.train_episodes(learner, r, k, h, 1))
        compiled = episode.lower(runner, key, hyper).compile()
        row["episode_seconds"] = median_seconds(compiled, (runner, key, hyper), repeats)
        flops, accessed = episode_cost(learner, runner, traj, key, hyper)
        row["episode_gflops"] = flops / 1e9
        row["episode_gbytes_accessed"] = accessed / 1e9
        row["achieved_gflops_per_second"] = row["episode_gflops"] / row["episode_seconds"]
        row["fraction_of_peak"] = row["achieved_gflops_per_second"] / peak_gflops
        row["num_rows"] = int(learner.task.params.num_rows)
        row["horizon"] = int(learner.task.params.horizon)
    row["guidance_seconds"] = row["rollout_dgpg_seconds"] - row["rollout_mappo_seconds"]
    row["rollout_seconds"] = row["rollout_dgpg_seconds"]
    parts = row["rollout_seconds"] + row["update_seconds"] + row["best_fit_seconds"]
    row["parts_over_episode"] = parts / row["episode_seconds"]
    for name in ("rollout", "guidance", "best_fit", "update"):
        row[f"{name}_share"] = row[f"{name}_seconds"] / parts
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="20,200,1000")
    parser.add_argument("--preset", choices=tuple(PRESETS), default="default")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--peak-gflops", type=float, default=166.0, help="the machine's nominal float32 peak")
    args = parser.parse_args()
    rows = []
    for n in (int(x) for x in args.sizes.split(",")):
        rows.append(profile(args.preset, n, args.repeats, args.peak_gflops))
        print(json.dumps(rows[-1]), flush=True)
    machine = describe()
    command = f"python benchmarks/profile_episode.py --sizes {args.sizes} --preset {args.preset}"
    RESULTS.mkdir(exist_ok=True)
    name = "profile_episode" if args.preset == "default" else f"profile_episode_{args.preset}"
    (RESULTS / f"{name}.json").write_text(json.dumps(
        {"date": datetime.date.today().isoformat(), "machine": machine, "command": command, "rows": rows},
        indent=2) + "\n")
    lines = [f"# One training episode, by part ({args.preset} preset)", "", f"Machine: {machine}. Command: "
             f"`{command}`. Seconds after compiling, median of {args.repeats}; shares of rollout + Best-Fit + "
             "update (guidance is inside the rollout).", "",
             "| N | J | episode s | rollout s | of which guidance s | Best-Fit s | update s | parts / episode | "
             f"GFLOP / episode | GB accessed / episode | GFLOP/s (of {args.peak_gflops:g} peak) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['num_agents']} | {r['num_rows']} | {r['episode_seconds']:.3f} | "
                     f"{r['rollout_seconds']:.3f} ({r['rollout_share']:.0%}) | {r['guidance_seconds']:.3f} "
                     f"({r['guidance_share']:.0%}) | {r['best_fit_seconds']:.3f} ({r['best_fit_share']:.0%}) | "
                     f"{r['update_seconds']:.3f} ({r['update_share']:.0%}) | {r['parts_over_episode']:.2f} | "
                     f"{r['episode_gflops']:.2f} | {r['episode_gbytes_accessed']:.2f} | "
                     f"{r['achieved_gflops_per_second']:.2f} ({r['fraction_of_peak']:.1%}) |")
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
