"""Sensitivity of DG-PG at N = 50 to its own choices, in the three cloud settings, on the same
seeds and traces: constant alpha in {0.2, 0.4, 0.6, 0.8} against the default 0.9 -> 0.2
schedule, the convex advantage against the additive one, exact guidance against sampled,
and every guidance potential.

    python experiments/sensitivity.py [--settings queueing,paper,in_turn] [--num-agents 50] [--seeds 5] [--episodes 20]
    python experiments/sensitivity.py --plot      # redraw from results/ only

Each variant is one `dgpg_jax.sweep` (resumable chunk by chunk) in
results/sensitivity/<setting>/<variant>/; summary.json holds per setting and variant the
final ratio to Best-Fit with its 95% CI, the mean and p99 response time and the episodes
to converge. Figure: docs/sensitivity.png.
"""

import dataclasses
import json
from pathlib import Path

from common import (ROOT, SETTINGS, experiment_parser, parse_settings, run_sweep, save_figure, setting_panels,
                    sweep_table, write_json)
from dgpg_jax import sweep
from dgpg_jax.tasks.cloud.guidance import POTENTIALS

OUT = ROOT / "results" / "sensitivity"
FIGURES = ROOT / "docs"
ALPHAS = (0.2, 0.4, 0.6, 0.8)


def variants(setting: str) -> dict[str, tuple[dict, dict]]:
    """name -> (TrainConfig fields changed from the setting's, sweep grid)."""
    default_potential = SETTINGS[setting].potential or "area"
    out = {"schedule": ({}, {}), "alpha": ({}, {"alpha": ALPHAS}), "convex": ({"advantage_form": "convex"}, {}),
           "exact": ({"guidance": "exact"}, {})}
    out.update({f"potential_{name}": ({"potential": name}, {}) for name in POTENTIALS if name != default_potential})
    return out


def make_sweep(setting: str, variant: str, num_agents: int, seeds: int, episodes: int) -> sweep.Sweep:
    changes, grid = variants(setting)[variant]
    base = dataclasses.replace(SETTINGS[setting], num_episodes=episodes, **changes)
    return sweep.Sweep(base, algos=("dgpg",), num_agents=(num_agents,), grid=grid, seeds=seeds)


def label(setting: str, variant: str, row: dict) -> str:
    if variant == "alpha":
        return f"alpha = {row['grid_alpha']:g}"
    if variant == "schedule":
        return f"alpha 0.9 -> 0.2, {SETTINGS[setting].potential or 'area'} (default)"
    return variant.replace("_", " ")


def summarise(settings: list[str], num_agents: int, seeds: int, episodes: int) -> dict:
    table: dict[str, list[dict]] = {}
    for setting in settings:
        for variant in variants(setting):
            spec = make_sweep(setting, variant, num_agents, seeds, episodes)
            for row in sweep_table(spec, OUT / setting / variant):
                table.setdefault(setting, []).append({"variant": label(setting, variant, row), **row})
    summary = {"num_agents": num_agents, "seeds": seeds, "episodes": episodes, "by_setting": table}
    OUT.mkdir(parents=True, exist_ok=True)
    write_json(OUT / "summary.json", summary)
    return summary


def plot() -> None:
    summary = json.loads((OUT / "summary.json").read_text())
    fig, panels = setting_panels(summary, 5.2, 3.8)
    for ax, setting, rows in panels:
        y = range(len(rows))
        ratio = [r["final_ratio"] for r in rows]
        err = [[r["final_ratio"] - r["final_ratio_ci95"][0] for r in rows],
               [r["final_ratio_ci95"][1] - r["final_ratio"] for r in rows]]
        ax.errorbar(ratio, y, xerr=err, fmt="o", capsize=3)
        ax.set_yticks(list(y), [r["variant"] for r in rows], fontsize=8)
        ax.axvline(1.0, color="black", lw=1)
        ax.set_xscale("log")  # the misaligned potentials end several times above the rest
        ticks = [t for t in (1, 1.2, 1.5, 2, 3, 4, 6, 8) if t <= max(r["final_ratio_ci95"][1] for r in rows) * 1.05]
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.minorticks_off()
        ax.invert_yaxis()
        ax.set_xlabel("final mean response time / Best-Fit (95% CI)")
        ax.set_title(f"{setting}, N = {summary['num_agents']}, {summary['seeds']} seeds")
        ax.grid(True, axis="x", alpha=0.3)
    save_figure(fig, FIGURES, "sensitivity.png")


if __name__ == "__main__":
    parser = experiment_parser(__doc__, OUT, FIGURES, settings="queueing,paper,in_turn", seeds=5, episodes=20)
    parser.add_argument("--num-agents", type=int, default=50)
    args = parser.parse_args()
    OUT, FIGURES = Path(args.out), Path(args.figures)
    settings = parse_settings(args.settings)
    if not args.plot:
        for setting in settings:
            for variant in variants(setting):
                run_sweep(make_sweep(setting, variant, args.num_agents, args.seeds, args.episodes),
                          OUT / setting / variant)
    summarise(settings, args.num_agents, args.seeds, args.episodes)
    plot()
