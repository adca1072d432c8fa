"""EV charging through the generic learner: DG-PG and MAPPO against the baselines and the
valley-filling bound, N = 10 .. 1500, on the same days.

    python experiments/ev_charging.py [--sizes 10,50,200,1000,1500] [--episodes 10] [--seeds 4]

Writes results/ev_charging/rows.jsonl (one row per N, algorithm and seed, plus one per N
and baseline, pooled over seeds) and summary.json; a rerun skips the (N, algo) pairs
already in rows.jsonl, so a killed run resumes. `--plot` redraws docs/ev_charging_scale.png
from the rows alone.
"""

import json
from pathlib import Path

import jax
import numpy as np

from common import ROOT, experiment_parser, pyplot, read_jsonl as read_rows, save_figure, write_json
from dgpg_jax import evaluate, runlog, runner, train
from dgpg_jax.tasks.ev import EVConfig

OUT = ROOT / "results" / "ev_charging"  # --out
FIGURES = ROOT / "docs"  # --figures


def run(sizes: list[int], episodes: int, seeds: int) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / "rows.jsonl"
    done = {(r["num_agents"], r["policy"]) for r in read_rows(path)}
    for n in sizes:
        for algo in ("dgpg", "mappo"):
            if (n, algo) in done:
                continue
            config = train.TrainConfig(algo=algo, env=EVConfig(num_agents=n), num_episodes=episodes)
            result = runner.run_training(config, seed=0, num_seeds=seeds)
            ratio = result.logs.ratio_to_reference
            converge = evaluate.episodes_to_converge(ratio)
            summary = result.summary()
            with open(path, "a") as f:
                for s in range(seeds):
                    f.write(json.dumps({"num_agents": n, "policy": algo, "seed": s, "ratio_per_episode":
                                        ratio[s].tolist(), "final_ratio": summary["final_ratio_to_reference_per_seed"][s],
                                        "episodes_to_converge": int(converge[s]),
                                        "wall_seconds": result.wall_seconds,
                                        "compile_seconds": result.compile_seconds}) + "\n")
        if (n, "random") not in done:
            task = EVConfig(num_agents=n).make_task()
            window = min(runlog.FINAL_WINDOW, episodes)
            run_keys = jax.vmap(train.traces_key)(evaluate.seed_keys(0, seeds))
            rows = evaluate.evaluate_policies(list(task.baselines.items()), task, run_keys, window, episodes - window)
            with open(path, "a") as f:
                for row in rows:
                    f.write(json.dumps({"num_agents": n, "policy": row["policy"], "seed": None,
                                        "final_ratio": row["ratio_to_reference"]}) + "\n")
    summarise()


def summarise() -> dict:
    rows = read_rows(OUT / "rows.jsonl")
    table = {}
    for r in rows:
        entry = table.setdefault(str(r["num_agents"]), {}).setdefault(r["policy"], {"final": [], "converge": []})
        entry["final"].append(r["final_ratio"])
        if r.get("episodes_to_converge") is not None:
            entry["converge"].append(r["episodes_to_converge"])
    summary = {n: {p: {"final_ratio_mean": float(np.mean(v["final"])), "final_ratio_min": float(np.min(v["final"])),
                       "final_ratio_max": float(np.max(v["final"])), "runs": len(v["final"]),
                       **({"episodes_to_converge_mean": float(np.mean(v["converge"]))} if v["converge"] else {})}
                   for p, v in by_policy.items()} for n, by_policy in table.items()}
    write_json(OUT / "summary.json", summary)
    print(json.dumps(summary, indent=1))
    return summary


def plot() -> None:
    plt = pyplot()

    summary = json.loads((OUT / "summary.json").read_text())
    sizes = sorted(summary, key=int)
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for policy in ("dgpg", "mappo", "arrival", "random", "greedy", "greedy_sequential"):
        xs = [int(n) for n in sizes if policy in summary[n]]
        ax.plot(xs, [summary[str(n)][policy]["final_ratio_mean"] for n in xs], marker="o", label=policy)
    ax.axhline(1.0, color="black", lw=1.2, label="valley bound")
    ax.set_xscale("log")
    ax.set_xlabel("EVs N")
    ax.set_ylabel("day cost / valley-filling bound (final 3 episodes)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    save_figure(fig, FIGURES, "ev_charging_scale.png")


if __name__ == "__main__":
    parser = experiment_parser(__doc__, OUT, FIGURES, episodes=10, seeds=4)
    parser.add_argument("--sizes", default="10,50,200,1000,1500")
    args = parser.parse_args()
    OUT, FIGURES = Path(args.out), Path(args.figures)
    if not args.plot:
        run([int(n) for n in args.sizes.split(",")], args.episodes, args.seeds)
    plot()
