"""Environment throughput: the jitted JAX env against the same step in NumPy.

For each number of agents N and of seeds S, runs S copies of the env for T steps under the
random policy (a uniformly random candidate of each job) and reports env steps per second
(S * T / wall time) and jobs dispatched per second:

- JAX: reset and a `lax.scan` over T steps, vmapped over seeds and jitted, once per PRNG
  implementation (threefry2x32, rbg); compile time is measured apart and excluded.
- NumPy (`numpy_env.py`): arrays with a leading seed axis, a Python loop over time only.

Rates are the best of several runs. Both sides also report the mean response time and the
mean observation sum per job (summing it also keeps XLA from dropping the observation); the
script checks that JAX and NumPy agree on both within the seed-to-seed noise, so that the two
run the same model, and exits 1 if not.

    python benchmarks/env_throughput.py           # full grid: N in {5, 50, 200, 1000} x S in {1, 64, 1024}, T = 1000
    python benchmarks/env_throughput.py --quick   # N in {5, 200} x S in {1, 64}, T = 200

Writes benchmarks/results/env_throughput.{json,md}.
"""

import argparse
import dataclasses
import datetime
import json
import math
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from dgpg_jax.tasks import cloud as env
from dgpg_jax.tasks.cloud import baselines
from dgpg_jax.tasks.cloud import NUM_JOB_FEATURES, CloudConfig, make_params
from numpy_env import NumpyEnv, rollout

PRNG_IMPLS = ("threefry2x32", "rbg")
IMPLS = PRNG_IMPLS + ("numpy",)
RESULTS = Path(__file__).parent / "results"


def jax_rollout(params, num_steps: int):
    """Jitted keys (S,) -> per-seed totals of reset + `num_steps` random-policy steps."""

    def one_seed(key):
        key, reset_key = jax.random.split(key)
        _, state = env.reset(reset_key, params)
        totals = {"response": jnp.zeros(()), "arrived": jnp.zeros((), jnp.int32),
                  "dispatched": jnp.zeros((), jnp.int32), "obs": jnp.zeros(())}

        def body(carry, _):
            key, state, totals = carry
            key, policy_key, step_key = jax.random.split(key, 3)
            dispatched = state.jobs.valid.sum()
            actions = baselines.random_policy(policy_key, state, params)
            obs, state, _, _, info = env.step(step_key, state, actions, params)
            totals = {"response": totals["response"] + info["response_time_sum"],
                      "arrived": totals["arrived"] + info["num_arrived"],
                      "dispatched": totals["dispatched"] + dispatched, "obs": totals["obs"] + obs.sum()}
            return (key, state, totals), None

        (_, _, totals), _ = jax.lax.scan(body, (key, state, totals), length=num_steps)
        return totals

    return jax.jit(jax.vmap(one_seed))


def best_of(run, repeats: int, budget: float):
    """(best wall time, output) of `run()` over `repeats` calls, fewer once they took `budget` s."""
    times = []
    while not times or (len(times) < repeats and sum(times) < budget):
        start = time.perf_counter()
        out = run()
        times.append(time.perf_counter() - start)
    return min(times), out, len(times)


def measure(impl: str, config: CloudConfig, num_seeds: int, repeats: int, budget: float) -> dict:
    """Time one implementation: rates, compile time, mean response time and observation sum per job."""
    num_steps = config.horizon
    if impl == "numpy":
        numpy_env = NumpyEnv(config, num_seeds)
        compile_s = None
        seconds, totals, runs = best_of(lambda: rollout(numpy_env, num_steps), repeats, budget)
    else:
        keys = jax.random.split(jax.random.key(0, dtype=impl), num_seeds)
        start = time.perf_counter()
        compiled = jax_rollout(make_params(config), num_steps).lower(keys).compile()
        compile_s = time.perf_counter() - start
        seconds, totals, runs = best_of(lambda: jax.block_until_ready(compiled(keys)), repeats, budget)
    totals = {name: np.asarray(value, np.float64) for name, value in totals.items()}
    return {
        "seconds": seconds, "runs": runs, "compile_seconds": compile_s,
        "steps_per_second": num_seeds * num_steps / seconds,
        "jobs_per_second": totals["dispatched"].sum() / seconds,
        "response": mean_se(totals["response"] / np.maximum(totals["arrived"], 1) / config.mean_job_steps),
        "obs_per_job": mean_se(totals["obs"] / np.maximum(totals["dispatched"], 1)),
    }


def mean_se(per_seed: np.ndarray) -> dict:
    """Mean over seeds and its standard error (None for one seed)."""
    se = per_seed.std(ddof=1) / math.sqrt(per_seed.size) if per_seed.size > 1 else None
    return {"mean": per_seed.mean(), "se": se}


def skip_reason(config: CloudConfig, num_seeds: int, previous: dict | None, max_seconds: float) -> str | None:
    """Why (N, S) is not run for one implementation: a working set over half the free memory, or a run projected
    (linearly in S from the last S at this N) to exceed `max_seconds`; None to run it."""
    params = make_params(config)
    per_seed = 4 * (4 * params.num_agents + 4 * params.num_rows * params.num_candidates * NUM_JOB_FEATURES
                    + 16 * params.num_servers)
    free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    if num_seeds * per_seed > free / 2:
        return f"working set ~{num_seeds * per_seed / 2**30:.1f} GiB > half the free memory"
    if previous is not None and "seconds" in previous:
        projected = previous["seconds"] * num_seeds / previous["num_seeds"]
        if projected > max_seconds:
            return f"projected {projected:.0f} s per run > --max-seconds {max_seconds:g}"
    return None


def agree(a: dict, b: dict) -> bool | None:
    """Whether two runs' mean response time and observation sum per job agree within 4 standard
    errors (None: one seed, no error bar)."""
    if a["response"]["se"] is None or b["response"]["se"] is None:
        return None
    return all(abs(a[key]["mean"] - b[key]["mean"]) <= 4 * math.hypot(a[key]["se"], b[key]["se"])
               for key in ("response", "obs_per_job"))


def si(x: float) -> str:
    """1234567 -> '1.23M'."""
    for factor, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if x >= factor:
            return f"{x / factor:.3g}{suffix}"
    return f"{x:.3g}"


def markdown(rows: list[dict]) -> str:
    """The throughput table and the agreement table."""
    def cell(row, impl, key, fmt=si):
        return "skipped" if "skipped" in row[impl] else fmt(row[impl][key])

    def mean_pm(row, impl, key):
        if "skipped" in row[impl]:
            return "skipped"
        mean, se = row[impl][key]["mean"], row[impl][key]["se"]
        return f"{mean:.3g}" + (f" ± {se:.2g}" if se is not None else "")

    lines = ["| N | seeds | T | threefry steps/s | threefry jobs/s | rbg steps/s | rbg jobs/s | NumPy steps/s "
             "| NumPy jobs/s | threefry / NumPy | rbg / NumPy |", "|" + "---|" * 11]
    for row in rows:
        rates = [cell(row, impl, key) for impl in IMPLS for key in ("steps_per_second", "jobs_per_second")]
        ratios = [f"{row['ratio'][impl]:.2f}" if row["ratio"][impl] is not None else "-" for impl in PRNG_IMPLS]
        lines.append(f"| {row['num_agents']} | {row['num_seeds']} | {row['num_steps']} | "
                     + " | ".join(rates + ratios) + " |")
    lines += ["", "Mean response time under the random policy (mean job times) and observation sum per job, "
              "± standard error over seeds; compile time; whether JAX and NumPy agree on both within 4 standard "
              "errors:", "",
              "| N | seeds | response threefry | response rbg | response NumPy | obs/job threefry | obs/job rbg "
              "| obs/job NumPy | compile s threefry | compile s rbg | agree |", "|" + "---|" * 11]
    for row in rows:
        check = {True: "yes", False: "**NO**", None: "n/a"}[row["agree"]]
        lines.append(f"| {row['num_agents']} | {row['num_seeds']} | "
                     + " | ".join(mean_pm(row, impl, key) for key in ("response", "obs_per_job") for impl in IMPLS)
                     + " | "
                     + " | ".join(cell(row, impl, "compile_seconds", lambda x: f"{x:.1f}") for impl in PRNG_IMPLS)
                     + f" | {check} |")
    return "\n".join(lines)


def machine() -> dict:
    """What ran the benchmark."""
    cpu_model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), None) if Path("/proc/cpuinfo").exists() else None
    return {"processor": platform.processor(), "cpu_model": cpu_model, "cpu_count": os.cpu_count(),
            "platform": platform.platform(), "python": platform.python_version(), "jax": jax.__version__,
            "numpy": np.__version__, "jax_devices": [str(d) for d in jax.devices()]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small grid, short horizon (under two minutes)")
    parser.add_argument("--agents", type=int, nargs="+", help="values of N (default 5 50 200 1000; quick 5 200)")
    parser.add_argument("--seeds", type=int, nargs="+", help="numbers of seeds (default 1 64 1024; quick 1 64)")
    parser.add_argument("--steps", type=int, help="T, steps per run = the env horizon (default 1000; quick 200)")
    parser.add_argument("--repeats", type=int, help="runs per measurement, best kept (default 5; quick 3)")
    parser.add_argument("--budget", type=float, default=20.0, help="stop repeating once runs took this many s")
    parser.add_argument("--max-seconds", type=float, default=300.0,
                        help="skip a run projected to take longer than this (default 300)")
    args = parser.parse_args()
    agents = args.agents or ([5, 200] if args.quick else [5, 50, 200, 1000])
    seeds = args.seeds or ([1, 64] if args.quick else [1, 64, 1024])
    num_steps = args.steps or (200 if args.quick else 1000)
    repeats = args.repeats or (3 if args.quick else 5)

    rows = []
    for num_agents in agents:
        config = CloudConfig(num_agents=num_agents, horizon=num_steps)
        previous = {}
        for num_seeds in seeds:
            row = {"num_agents": num_agents, "num_seeds": num_seeds, "num_steps": num_steps}
            for impl in IMPLS:
                reason = skip_reason(config, num_seeds, previous.get(impl), args.max_seconds)
                row[impl] = {"skipped": reason} if reason else measure(impl, config, num_seeds, repeats, args.budget)
                previous[impl] = {**row[impl], "num_seeds": num_seeds}
                print(f"N={num_agents:5d} seeds={num_seeds:5d} {impl:13s} "
                      + (f"skipped: {reason}" if reason else
                         f"{si(row[impl]['steps_per_second'])} steps/s, {si(row[impl]['jobs_per_second'])} jobs/s, "
                         f"best of {row[impl]['runs']} ({row[impl]['seconds']:.3f} s), "
                         f"mean response {row[impl]['response']['mean']:.3f}"), flush=True)
            measured = "skipped" not in row["numpy"]
            row["ratio"] = {impl: row[impl]["steps_per_second"] / row["numpy"]["steps_per_second"]
                            if measured and "skipped" not in row[impl] else None for impl in PRNG_IMPLS}
            checks = [agree(row[impl], row["numpy"]) for impl in PRNG_IMPLS if row["ratio"][impl] is not None]
            row["agree"] = None if not checks or None in checks else all(checks)
            rows.append(row)

    table = markdown(rows)
    skipped = [f"N={r['num_agents']}, seeds={r['num_seeds']}, {impl}: {r[impl]['skipped']}"
               for r in rows for impl in IMPLS if "skipped" in r[impl]]
    env_config = {key: value for key, value in dataclasses.asdict(CloudConfig(horizon=num_steps)).items()
                  if key != "num_agents"}
    info = {"machine": machine(), "command": shlex.join(sys.orig_argv),
            "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "settings": {"quick": args.quick, "num_steps": num_steps, "repeats": repeats, "budget": args.budget,
                         "max_seconds": args.max_seconds, "policy": "random", "prng_impls": list(PRNG_IMPLS),
                         "env_config": env_config},
            "rows": rows}
    m = info["machine"]
    header = (f"# Environment throughput\n\n`{info['command']}` at {info['timestamp']} on {m['cpu_model']} "
              f"({m['cpu_count']} CPUs, processor {m['processor']!r}), jax {m['jax']}, numpy {m['numpy']}.\n"
              "Steps/s = seeds x T / wall time (best of runs, compile excluded); jobs/s = jobs dispatched / wall "
              "time; random policy, default env otherwise (num_agents and horizon = T aside).\n")
    notes = "\n\nSkipped:\n" + "\n".join(f"- {s}" for s in skipped) if skipped else ""
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "env_throughput.json").write_text(json.dumps(info, indent=2) + "\n")
    (RESULTS / "env_throughput.md").write_text(header + "\n" + table + notes + "\n")
    print("\n" + table + notes)
    if any(row["agree"] is False for row in rows):
        print("\nMISMATCH: JAX and NumPy response times or observations differ beyond the noise", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
