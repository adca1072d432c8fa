"""Small scale: DG-PG, MAPPO and IPPO at N = 2, 5 and 10 for 500 episodes, both cloud
settings, the same seeds and traces. The paper says MAPPO and IPPO fail there too.

    python experiments/small_scale.py [--settings queueing,paper] [--sizes 2,5,10] [--seeds 5] [--episodes 500]
    python experiments/small_scale.py --plot      # redraw from results/ only

At N = 2 the fleet has one server (M = ceil(N / 2)), so no policy has a choice: every
ratio to Best-Fit is 1, which checks the pipeline rather than the learners. One sweep per
setting in results/small_scale/<setting>/ (resumable); summary.json holds per setting,
N and algorithm the final ratio to Best-Fit (last 3 episodes) with its 95% CI, the mean
ratio over episodes 18-20 (where the scale experiment stops) and the episodes to converge.
Figure: docs/small_scale.png (learning curves, a 10-episode moving average).
"""

import dataclasses
from pathlib import Path

import numpy as np

from common import (ALGOS, ROOT, SETTINGS, experiment_parser, parse_settings, pyplot, run_sweep, save_figure,
                    sweep_table, write_json)
from dgpg_jax import sweep

OUT = ROOT / "results" / "small_scale"
FIGURES = ROOT / "docs"
EARLY = 20  # the scale experiment's length


def make_sweep(setting: str, sizes: list[int], seeds: int, episodes: int) -> sweep.Sweep:
    return sweep.Sweep(dataclasses.replace(SETTINGS[setting], num_episodes=episodes), algos=ALGOS,
                       num_agents=tuple(sizes), seeds=seeds)


def _rows(setting: str):
    """Every (config, seed, episode) row, from the chunk files (rows.jsonl, the same rows
    again, is 20 MB at 500 episodes and is not committed)."""
    import pandas as pd

    return pd.DataFrame([row for doc in sweep.read_chunks(OUT / setting) for row in doc["rows"]])


def summarise(settings: list[str], sizes: list[int], seeds: int, episodes: int) -> dict:
    table: dict[str, list[dict]] = {}
    for setting in settings:
        rows = _rows(setting)
        for row in sweep_table(make_sweep(setting, sizes, seeds, episodes), OUT / setting):
            mine = rows[(rows.num_agents == row["num_agents"]) & (rows.algo == row["algo"])]
            early = mine[(mine.episode > EARLY - 3) & (mine.episode <= EARLY)]["ratio_to_best_fit"].mean()
            table.setdefault(setting, []).append({**row, f"ratio_episodes_{EARLY - 2}_{EARLY}": float(early)})
    summary = {"episodes": episodes, "seeds": seeds, "by_setting": table}
    write_json(OUT / "summary.json", summary)
    return summary


def plot(settings: list[str], sizes: list[int]) -> None:
    plt = pyplot()

    fig, axes = plt.subplots(len(settings), len(sizes), figsize=(3.4 * len(sizes), 2.8 * len(settings)),
                             sharey=True, squeeze=False)
    for r, setting in enumerate(settings):
        rows = _rows(setting)
        for ax, n in zip(axes[r], sizes):
            for algo in ALGOS:
                mine = rows[(rows.num_agents == n) & (rows.algo == algo)]
                if len(mine):
                    curve = mine.groupby("episode")["ratio_to_best_fit"].mean()
                    width = min(10, len(curve))
                    smooth = np.convolve(curve.to_numpy(), np.ones(width) / width, mode="valid")
                    ax.plot(curve.index[width - 1:], smooth, label=algo)
            ax.axhline(1.0, color="black", lw=1)
            ax.set_xscale("log")
            ax.set_title(f"{setting}, N = {n}", fontsize=9)
            ax.grid(True, alpha=0.3)
        axes[r][0].set_ylabel("/ Best-Fit (10-ep. average)")
    for ax in axes[-1]:
        ax.set_xlabel("episode")
    axes[0][0].set_ylim(0.9, 1.6)
    axes[0][0].legend(fontsize=7)
    save_figure(fig, FIGURES, "small_scale.png")


if __name__ == "__main__":
    parser = experiment_parser(__doc__, OUT, FIGURES, settings="queueing,paper", seeds=5, episodes=500)
    parser.add_argument("--sizes", default="2,5,10")
    args = parser.parse_args()
    OUT, FIGURES = Path(args.out), Path(args.figures)
    settings, sizes = parse_settings(args.settings), [int(n) for n in args.sizes.split(",")]
    if not args.plot:
        for setting in settings:
            run_sweep(make_sweep(setting, sizes, args.seeds, args.episodes), OUT / setting)
    summarise(settings, sizes, args.seeds, args.episodes)
    plot(settings, sizes)
