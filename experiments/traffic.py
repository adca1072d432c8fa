"""Route choice (examples/traffic.py, a task written only against the public interface):
DG-PG, MAPPO and IPPO at N = 20, 100 and 500 for 20 episodes, 5 seeds, beside the
`random` and `shortest` (every commuter on the free-flow fastest route) baselines, all as
ratios to the system optimum on the same days.

    python experiments/traffic.py [--sizes 20,100,500] [--seeds 5] [--episodes 20]
    python experiments/traffic.py --plot      # redraw from results/ only

One sweep in results/traffic/ (resumable); summary.json holds per N and algorithm the
final ratio to the optimum (last 3 episodes) with its 95% CI and the episodes to
converge, and the baselines' ratios. Figure: docs/traffic.png.
"""

import sys
from pathlib import Path

from common import ALGOS, ROOT, baseline_rows, experiment_parser, pyplot, run_sweep, save_figure, sweep_table, write_json

sys.path.insert(0, str(ROOT))  # examples/ is importable, as from the repository root
from dgpg_jax import sweep, train  # noqa: E402
from examples.traffic import TrafficConfig  # noqa: E402

OUT = ROOT / "results" / "traffic"
FIGURES = ROOT / "docs"
BASELINES = ("random", "shortest")


def make_sweep(sizes: list[int], seeds: int, episodes: int) -> sweep.Sweep:
    return sweep.Sweep(train.TrainConfig(env=TrafficConfig(), num_episodes=episodes), algos=ALGOS,
                       num_agents=tuple(sizes), seeds=seeds)


def summarise(sizes: list[int], seeds: int, episodes: int) -> dict:
    rows = sweep_table(make_sweep(sizes, seeds, episodes), OUT)
    baselines = [{"num_agents": n, **{key: row[key] for key in ("policy", "ratio_to_optimum", "cost")}}
                 for n in sizes for row in baseline_rows(TrafficConfig(num_agents=n), BASELINES, seeds, episodes)]
    summary = {"learners": rows, "baselines": baselines}
    write_json(OUT / "summary.json", summary)
    return summary


def plot(summary: dict) -> None:
    fig, ax = pyplot().subplots(figsize=(6, 3.8))
    for algo in ALGOS:
        rows = sorted((r for r in summary["learners"] if r["algo"] == algo), key=lambda r: r["num_agents"])
        sizes = [r["num_agents"] for r in rows]
        low = [r["final_ratio"] - r["final_ratio_ci95"][0] for r in rows]
        high = [r["final_ratio_ci95"][1] - r["final_ratio"] for r in rows]
        ax.errorbar(sizes, [r["final_ratio"] for r in rows], yerr=[low, high], marker="o", capsize=3, label=algo)
    random = sorted((r for r in summary["baselines"] if r["policy"] == "random"), key=lambda r: r["num_agents"])
    ax.plot([r["num_agents"] for r in random], [r["ratio_to_optimum"] for r in random], ":", color="grey",
            label="random")
    shortest = [r["ratio_to_optimum"] for r in summary["baselines"] if r["policy"] == "shortest"]
    ax.axhline(1.0, color="black", linewidth=0.8)
    sizes = sorted({r["num_agents"] for r in summary["learners"]})
    ax.set(xscale="log", xticks=sizes, xticklabels=[str(n) for n in sizes], ylim=(0.95, 1.9),
           xlabel="commuters N", ylabel="total travel time / system optimum",
           title=f"route choice: final 3 of 20 episodes, 5 seeds (95% CI)\n"
                 f"(shortest route for all: {min(shortest):.1f}-{max(shortest):.1f}, off the scale)")
    ax.minorticks_off()
    ax.legend(fontsize=8)
    save_figure(fig, FIGURES, "traffic.png")


if __name__ == "__main__":
    parser = experiment_parser(__doc__, OUT, FIGURES, seeds=5, episodes=20)
    parser.add_argument("--sizes", default="20,100,500")
    args = parser.parse_args()
    OUT, FIGURES = Path(args.out), Path(args.figures)
    sizes = [int(n) for n in args.sizes.split(",")]
    if not args.plot:
        run_sweep(make_sweep(sizes, args.seeds, args.episodes), OUT)
    plot(summarise(sizes, args.seeds, args.episodes))
