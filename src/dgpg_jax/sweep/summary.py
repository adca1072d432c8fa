"""A sweep's summary: per configuration, the final ratio to the reference with rliable's
stratified-bootstrap CIs and the task's pooled final metrics (summary.json), and the plot
of the final ratio (final_ratio.png).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Sequence

import jax
import numpy as np

from dgpg_jax import evaluate
from dgpg_jax.runlog import metrics_from_columns
from dgpg_jax.sweep.spec import Sweep


def summarise(sweep: Sweep, docs: list[dict], bootstrap_reps: int = 2000) -> list[dict]:
    """Per configuration, from the chunk files: seeds done; the mean and the interquartile
    mean over seeds of the per-seed final ratio to the reference (the ratio of the pooled
    costs of the final FINAL_WINDOW episodes, as RunResult.summary's per-seed ratio) with
    95% stratified-bootstrap CIs (rliable, seeded with 0, `bootstrap_reps` replications)
    as `final_ratio_to_reference_{mean,ci95,iqm,iqm_ci95,per_seed}`; every metric of
    `task.pool` over the final episodes of all seeds as `final_<metric>` (for cloud
    scheduling the mean and p99 response time of those jobs), the reference's as
    `<reference>_final_<metric>`; the mean episodes to converge."""
    from rliable import library, metrics

    task = sweep.base.env.make_task()
    ratio_column = task.ratio_key
    rows_of: dict[tuple, dict[int, list[dict]]] = {}
    finals_of: dict[tuple, dict[int, dict]] = {}
    names = ["algo", "num_agents"] + [f"grid_{name}" for name in sweep.grid_names]
    for doc in docs:
        for row in doc["rows"]:
            rows_of.setdefault(tuple(row[k] for k in names), {}).setdefault(row["seed"], []).append(row)
        for final in doc["final_metrics"]:
            finals_of.setdefault(tuple(final[k] for k in names), {})[final["seed"]] = final["columns"]
    out = []
    for config in sweep.configurations():
        key = tuple(config[k] for k in names)
        per_seed = {s: sorted(rows, key=lambda r: r["episode"]) for s, rows in sorted(rows_of.get(key, {}).items())}
        entry = {**config, "seeds_done": len(per_seed)}
        if not per_seed:
            out.append({**entry, "final_ratio_to_reference_mean": None, "final_ratio_to_reference_ci95": [None, None],
                        "final_ratio_to_reference_iqm": None, "final_ratio_to_reference_iqm_ci95": [None, None],
                        "episodes_to_converge_mean": None})
            continue
        # (seeds, window, ...) metrics of the learner and of the reference
        metrics_all, reference_all = metrics_from_columns(
            {name: np.stack([np.asarray(finals_of[key][s][name]) for s in per_seed])
             for name in finals_of[key][next(iter(per_seed))]}, task)
        ratios = np.array([evaluate.ratio_of_means(task, jax.tree.map(lambda x, i=i: x[i], metrics_all),
                                                   jax.tree.map(lambda x, i=i: x[i], reference_all))
                           for i in range(len(per_seed))])
        ratio_curves = np.array([[r[ratio_column] for r in rows] for rows in per_seed.values()], np.float64)
        scores = ratios[:, None]  # (runs, tasks = 1)
        # rliable 1.2's StratifiedBootstrap draws its indices from numpy's global generator
        # (np.random.choice), not from random_state: seed that too, and put it back after.
        global_state = np.random.get_state()
        try:
            np.random.seed(0)
            with warnings.catch_warnings():  # arch's notice that random_state will become `generator`
                warnings.filterwarnings("ignore", "random_state is deprecated", FutureWarning)
                point, interval = library.get_interval_estimates(
                    {"x": scores}, lambda x: np.array([metrics.aggregate_mean(x), metrics.aggregate_iqm(x)]),
                    reps=bootstrap_reps, random_state=np.random.RandomState(0))
        finally:
            np.random.set_state(global_state)
        mean, iqm = (float(v) for v in point["x"])
        (mean_low, iqm_low), (mean_high, iqm_high) = (np.asarray(interval["x"], np.float64)).tolist()
        out.append({**entry,
                    "final_ratio_to_reference_mean": mean, "final_ratio_to_reference_ci95": [mean_low, mean_high],
                    "final_ratio_to_reference_iqm": iqm, "final_ratio_to_reference_iqm_ci95": [iqm_low, iqm_high],
                    "final_ratio_to_reference_per_seed": ratios.tolist(), "seeds": list(per_seed),
                    **{f"final_{k}": v for k, v in task.pool(metrics_all).items()},
                    **{f"{task.reference_name}_final_{k}": v for k, v in task.pool(reference_all).items()},
                    "episodes_to_converge_mean": float(evaluate.episodes_to_converge(ratio_curves).mean())})
    return out


def plot_final_ratio(configurations: list[dict], grid_names: Sequence[str], path: Path,
                     reference: str = "best_fit") -> None:
    """Final ratio to the reference (mean over seeds, 95% CI band) against the first grid value,
    or against N without a grid: one line per algo (and per N and other grid values)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x_name = f"grid_{grid_names[0]}" if grid_names else "num_agents"
    label_names = ["algo"] + (["num_agents"] if grid_names else []) + [f"grid_{n}" for n in grid_names[1:]]
    lines: dict[str, list] = {}
    for c in configurations:
        if c.get("final_ratio_to_reference_mean") is None:
            continue
        label = ", ".join(str(c[k]) if k == "algo" else f"{k.removeprefix('grid_')}={c[k]:g}" for k in label_names)
        low, high = c["final_ratio_to_reference_ci95"]
        lines.setdefault(label, []).append((c[x_name], c["final_ratio_to_reference_mean"], low, high))
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for label, points in lines.items():
        x, mean, low, high = (np.array(v, np.float64) for v in zip(*sorted(points)))
        (line,) = ax.plot(x, mean, marker="o", ms=4, label=label)
        ax.fill_between(x, low, high, color=line.get_color(), alpha=0.2)
    ax.axhline(1.0, color="black", lw=1.2, label=reference)
    if x_name == "num_agents":
        ax.set_xscale("log")
    ax.set_xlabel(x_name.removeprefix("grid_"))
    ax.set_ylabel(f"final cost / {reference}")
    ax.set_title("sweep: mean over seeds, 95% bootstrap CI")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
