"""Scale invariance: DG-PG, MAPPO and IPPO against the baselines at N = 5 .. 1500, the
same seeds and traces, through the sweep engine.

    python experiments/scale.py [--setting queueing|paper] [--sizes 5,10,...] [--seeds 5] [--episodes 20]
    python experiments/scale.py --setting queueing --plot      # redraw the figures from results/ only

The training runs are one `dgpg_jax.sweep` per setting in results/scale/<setting>/sweep
(resumable chunk by chunk: a killed run continues where it stopped). The baselines are
evaluated per N on the traces of the final 3 episodes of the same seeds
(results/scale/<setting>/baselines.jsonl, one row per N and policy, pooled over seeds;
an N already there is skipped). summary.json joins both per N: final ratio to Best-Fit
with its 95% CI, mean and p99 response time, rejection rate, episodes to converge, and
the seconds to run all seeds of one (algo, N), compile excluded (summed over its chunk
files, so a resumed run counts each chunk once; the first algo at each N also runs the
Best-Fit references). Figures: docs/scale_<setting>_final.png (final ratio against N),
docs/scale_<setting>_converge.png (episodes to converge against N) and
docs/scale_<setting>_curves.png (learning curves per N).
"""

import dataclasses
import json
from pathlib import Path

import numpy as np

from common import (ALGOS, ROOT, SETTINGS, append_jsonl, baseline_rows, experiment_parser, pyplot, read_jsonl,
                    run_sweep, save_figure, sweep_table, write_json)
from dgpg_jax import sweep
from dgpg_jax.runlog import FINAL_WINDOW

OUT = ROOT / "results" / "scale"  # --out: one directory per setting below it
FIGURES = ROOT / "docs"  # --figures
POLICIES = ("best_fit", "greedy", "greedy_k", "greedy_k_simultaneous", "bestfit_k", "jsq", "static_split",
            "power_of_d", "capacity", "random")


def out_dir(setting: str) -> Path:
    return OUT / setting


def make_sweep(setting: str, sizes: list[int], seeds: int, episodes: int) -> sweep.Sweep:
    return sweep.Sweep(dataclasses.replace(SETTINGS[setting], num_episodes=episodes), algos=ALGOS,
                       num_agents=tuple(sizes), seeds=seeds)


def run_baselines(setting: str, sizes: list[int], seeds: int, episodes: int) -> None:
    path = out_dir(setting) / "baselines.jsonl"
    done = {row["num_agents"] for row in read_jsonl(path)}
    for n in sizes:
        if n in done:
            continue
        rows = baseline_rows(dataclasses.replace(SETTINGS[setting].env, num_agents=n), POLICIES, seeds, episodes)
        append_jsonl(path, [{"num_agents": n, **row} for row in rows])
        print(f"baselines N={n} done", flush=True)


def summarise(setting: str, spec: sweep.Sweep) -> dict:
    """summary.json from the chunk files written so far (a killed sweep included)."""
    table: dict[str, dict] = {}
    for row in sweep_table(spec, out_dir(setting) / "sweep"):
        table.setdefault(str(row["num_agents"]), {})[row["algo"]] = {
            "final_ratio": row["final_ratio"], "final_ratio_ci95": row["final_ratio_ci95"],
            "final_ratio_per_seed": row["final_ratio_per_seed"], "mean_response_time": row["final_mean_response_time"],
            "p99_response_time": row["final_p99_response_time"], "rejection_rate": row["final_rejection_rate"],
            "episodes_to_converge": row["episodes_to_converge"], "seeds": row["seeds"],
            "run_seconds": row["run_seconds"]}
    for row in read_jsonl(out_dir(setting) / "baselines.jsonl"):
        table.setdefault(str(row["num_agents"]), {})[row["policy"]] = {
            "final_ratio": row["ratio_to_reference"], "mean_response_time": row["mean_response_time"],
            "p99_response_time": row["p99_response_time"], "rejection_rate": row["rejection_rate"]}
    summary = {"setting": setting, "episodes": spec.episodes, "seeds": spec.seeds,
               "final_window": min(FINAL_WINDOW, spec.episodes), "by_num_agents": table}
    write_json(out_dir(setting) / "summary.json", summary)
    return summary


def plot(setting: str) -> None:
    plt = pyplot()
    import pandas as pd

    summary = json.loads((out_dir(setting) / "summary.json").read_text())
    table = summary["by_num_agents"]
    sizes = sorted(table, key=int)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for policy in ALGOS + ("greedy", "greedy_k_simultaneous", "jsq"):  # the static split is off the scale
        xs = [int(n) for n in sizes if policy in table[n]]
        if not xs:
            continue
        y = np.array([table[str(n)][policy]["final_ratio"] for n in xs])
        (line,) = ax.plot(xs, y, marker="o" if policy in ALGOS else ".", ls="-" if policy in ALGOS else ":",
                          label=policy)
        if policy in ALGOS:
            low, high = (np.array([table[str(n)][policy]["final_ratio_ci95"][i] for n in xs]) for i in (0, 1))
            ax.fill_between(xs, low, high, color=line.get_color(), alpha=0.2)
    ax.axhline(1.0, color="black", lw=1.2, label="best_fit")
    ax.set_xscale("log")
    ax.set_ylim(0.75, 2.1 if setting == "queueing" else 5.5)
    ax.set_xlabel("agents N")
    ax.set_ylabel(f"final mean response time / Best-Fit (last {summary['final_window']} episodes)")
    ax.set_title(f"{setting}: {summary['seeds']} seeds, {summary['episodes']} episodes, 95% CI")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    save_figure(fig, FIGURES, f"scale_{setting}_final.png")

    fig, ax = plt.subplots(figsize=(6, 3.8))
    for policy in ALGOS:
        xs = [int(n) for n in sizes if policy in table[n]]
        ax.plot(xs, [table[str(n)][policy]["episodes_to_converge"] for n in xs], marker="o", label=policy)
    ax.axhline(10, color="grey", ls="--", lw=1, label="10 episodes")
    ax.set_xscale("log")
    ax.set_xlabel("agents N")
    ax.set_ylabel("episodes to converge (mean over seeds)")
    ax.set_title(setting)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, FIGURES, f"scale_{setting}_converge.png")

    rows = pd.read_json(out_dir(setting) / "sweep" / "rows.jsonl", lines=True, precise_float=True)
    fig, axes = plt.subplots(1, len(sizes), figsize=(2.6 * len(sizes), 3), sharey=True, squeeze=False)
    for ax, n in zip(axes[0], sizes):
        for algo in ALGOS:
            mine = rows[(rows.num_agents == int(n)) & (rows.algo == algo)]
            if len(mine):
                curve = mine.groupby("episode")["ratio_to_best_fit"].mean()
                ax.plot(curve.index, curve.to_numpy(), label=algo)
        ax.axhline(1.0, color="black", lw=1)
        ax.set_title(f"N = {n}")
        ax.set_xlabel("episode")
        ax.grid(True, alpha=0.3)
    axes[0][0].set_ylabel("/ Best-Fit (mean over seeds)")
    axes[0][0].set_ylim(0.8, 2.5 if setting == "queueing" else 6.0)
    axes[0][0].legend(fontsize=7)
    save_figure(fig, FIGURES, f"scale_{setting}_curves.png")


if __name__ == "__main__":
    parser = experiment_parser(__doc__, OUT, FIGURES, seeds=5, episodes=20)
    parser.add_argument("--setting", choices=tuple(SETTINGS), default="queueing")
    parser.add_argument("--sizes", default="5,10,20,50,100,200,500,1000,1500")
    args = parser.parse_args()
    OUT, FIGURES = Path(args.out), Path(args.figures)
    sizes = [int(n) for n in args.sizes.split(",")]
    spec = make_sweep(args.setting, sizes, args.seeds, args.episodes)
    if not args.plot:
        out_dir(args.setting).mkdir(parents=True, exist_ok=True)
        run_baselines(args.setting, sizes, args.seeds, args.episodes)
        run_sweep(spec, out_dir(args.setting) / "sweep")
    summarise(args.setting, spec)
    plot(args.setting)
