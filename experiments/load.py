"""Load and heterogeneity: DG-PG, MAPPO and IPPO at utilisation 0.5, 0.75 and 0.9 on the
catalog fleet, and at 0.75 on a homogeneous fleet (all servers equal, the same total
capacity), in the three cloud settings, against Best-Fit and the greedies on the same traces.

    python experiments/load.py [--settings queueing,paper,in_turn] [--sizes 50] [--seeds 5] [--episodes 20]
    python experiments/load.py --plot      # redraw from results/ only

Utilisation is a traced value, so each (fleet, algo, N) is one sweep program over the
utilisation grid (results/load/<setting>/<fleet>/, resumable); the baselines are in
baselines.jsonl (one row per fleet, N, utilisation and policy). summary.json holds per
setting, fleet, N and utilisation each policy's final ratio to Best-Fit (95% CI for the
learners), mean and p99 response time and episodes to converge. Figure: docs/load.png.
"""

import dataclasses
import json
from pathlib import Path

from common import (ALGOS, ROOT, SETTINGS, append_jsonl, baseline_rows, experiment_parser, parse_settings, read_jsonl,
                    run_sweep, save_figure, setting_panels, sweep_table, write_json)
from dgpg_jax import sweep

OUT = ROOT / "results" / "load"
FIGURES = ROOT / "docs"
FLEETS = {"catalog": (0.5, 0.75, 0.9), "homogeneous": (0.75,)}  # fleet -> utilisations
POLICIES = ("best_fit", "greedy", "greedy_k", "greedy_k_simultaneous", "jsq")


def make_sweep(setting: str, fleet: str, sizes: list[int], seeds: int, episodes: int) -> sweep.Sweep:
    base = SETTINGS[setting]
    base = dataclasses.replace(base, num_episodes=episodes, env=dataclasses.replace(base.env, fleet=fleet))
    return sweep.Sweep(base, algos=ALGOS, num_agents=tuple(sizes), grid={"utilisation": FLEETS[fleet]}, seeds=seeds)


def run_baselines(setting: str, sizes: list[int], seeds: int, episodes: int) -> None:
    path = OUT / setting / "baselines.jsonl"
    done = {(row["fleet"], row["num_agents"], row["utilisation_target"]) for row in read_jsonl(path)}
    for fleet, loads in FLEETS.items():
        for n in sizes:
            for rho in loads:
                if (fleet, n, rho) in done:
                    continue
                env = dataclasses.replace(SETTINGS[setting].env, num_agents=n, utilisation=rho, fleet=fleet)
                rows = baseline_rows(env, POLICIES, seeds, episodes)
                append_jsonl(path, [{"fleet": fleet, "utilisation_target": rho, **row} for row in rows])


def summarise(settings: list[str], sizes: list[int], seeds: int, episodes: int) -> dict:
    table: dict[str, list[dict]] = {}
    for setting in settings:
        for fleet in FLEETS:
            for row in sweep_table(make_sweep(setting, fleet, sizes, seeds, episodes), OUT / setting / fleet):
                table.setdefault(setting, []).append({"fleet": fleet, "utilisation_target": row["grid_utilisation"],
                                                      "policy": row["algo"], **row})
        for row in read_jsonl(OUT / setting / "baselines.jsonl"):
            table.setdefault(setting, []).append({**row, "final_ratio": row["ratio_to_reference"]})
    summary = {"episodes": episodes, "seeds": seeds, "by_setting": table}
    write_json(OUT / "summary.json", summary)
    return summary


def plot() -> None:
    summary = json.loads((OUT / "summary.json").read_text())
    fig, panels = setting_panels(summary, 5.5, 3.8)
    for ax, setting, rows in panels:
        cases = sorted({(r["fleet"], r["num_agents"], r["utilisation_target"]) for r in rows})
        policies = [p for p in ALGOS + POLICIES[1:] if any(r["policy"] == p for r in rows)]
        width = 0.8 / len(policies)
        for i, policy in enumerate(policies):
            ys = [next((r["final_ratio"] for r in rows if r["policy"] == policy
                        and (r["fleet"], r["num_agents"], r["utilisation_target"]) == case), float("nan"))
                  for case in cases]
            ax.bar([c + width * (i - (len(policies) - 1) / 2) for c in range(len(cases))], [y - 1 for y in ys],
                   width=width, bottom=1, label=policy)
        ax.axhline(1.0, color="black", lw=1)
        ax.set_xticks(range(len(cases)), [f"{f}\nN={n}, rho={rho:g}" for f, n, rho in cases], fontsize=7)
        ax.set_ylabel("final mean response time / Best-Fit")
        ax.set_title(f"{setting}: {summary['seeds']} seeds, {summary['episodes']} episodes")
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
    save_figure(fig, FIGURES, "load.png")


if __name__ == "__main__":
    parser = experiment_parser(__doc__, OUT, FIGURES, settings="queueing,paper,in_turn", seeds=5, episodes=20)
    parser.add_argument("--sizes", default="50")
    args = parser.parse_args()
    OUT, FIGURES = Path(args.out), Path(args.figures)
    settings, sizes = parse_settings(args.settings), [int(n) for n in args.sizes.split(",")]
    if not args.plot:
        for setting in settings:
            (OUT / setting).mkdir(parents=True, exist_ok=True)
            run_baselines(setting, sizes, args.seeds, args.episodes)
            for fleet in FLEETS:
                run_sweep(make_sweep(setting, fleet, sizes, args.seeds, args.episodes), OUT / setting / fleet)
    summarise(settings, sizes, args.seeds, args.episodes)
    plot()
