"""The paper's variance claim, measured: the relative variance of one agent's policy
gradient under the shared return and under the guidance, N = 5 .. 1500, for the initial
actor and a trained one, in four settings (cloud scheduling in the queueing setting, in
the paper preset and in the in-turn setting of the defaults, and EV charging).

    python experiments/variance.py [--sizes 5,10,...] [--rollouts 64] [--settings queueing,paper,in_turn,ev-charging]
    python experiments/variance.py --plot      # redraw docs/variance_slopes.png from results/ only

Each measurement is `dgpg_jax.diagnostics.measure` (what `dgpg variance --json` prints),
64 rollouts on the same day, seed 0. The trained actor is DG-PG trained for 10 episodes
at N = 50 in the same setting (seed 0), then measured at every N without retraining.
Cloud days are 200 steps (the default 1000 only repeats the same statistics). Writes
results/variance/rows.jsonl (one row per setting, actor and N; a rerun skips the rows
already there, so a killed run resumes) and summary.json: per setting, actor and
estimator, the log-log slope of the relative variance against N with a 95% interval
(a parametric bootstrap over the points' standard errors). The paper predicts a slope
of about 1 for the shared return and about 0 for the guidance.
"""

import dataclasses
import json
from pathlib import Path

import jax
import numpy as np

from common import ROOT, SETTINGS as CLOUD_SETTINGS, append_jsonl, experiment_parser, pyplot, read_jsonl, save_figure, write_json
from dgpg_jax import diagnostics, runner, train
from dgpg_jax.tasks.ev import EVConfig

OUT = ROOT / "results" / "variance"  # --out
FIGURES = ROOT / "docs"  # --figures
SETTINGS = {  # the cloud settings of experiments/common.py on a 200-step day, and EV charging
    **{name: dataclasses.replace(config, env=dataclasses.replace(config.env, horizon=200))
       for name, config in CLOUD_SETTINGS.items()},
    "ev-charging": train.TrainConfig(env=EVConfig()),
}
TRAINED_AT, TRAINED_EPISODES = 50, 10


def at_size(config: train.TrainConfig, n: int) -> train.TrainConfig:
    return dataclasses.replace(config, env=dataclasses.replace(config.env, num_agents=n))


def read_rows() -> list[dict]:
    return read_jsonl(OUT / "rows.jsonl")


def run(settings: list[str], sizes: list[int], rollouts: int) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    done = {(r["setting"], r["actor"], r["num_agents"]) for r in read_rows()}
    for setting in settings:
        base = SETTINGS[setting]
        for actor_name in ("initial", "trained"):
            todo = [n for n in sizes if (setting, actor_name, n) not in done]
            if not todo:
                continue
            actor = None
            if actor_name == "trained":
                trained = runner.run_training(dataclasses.replace(at_size(base, TRAINED_AT),
                                                                  num_episodes=TRAINED_EPISODES), seed=0, num_seeds=1)
                learner = train.make_learner(trained.config)
                actor = (learner.actor, jax.tree.map(lambda x: x[0], trained.runner.params["actor"]))
            for n in todo:
                result = diagnostics.measure(at_size(base, n), rollouts=rollouts, actor=actor)
                row = {"setting": setting, "actor": actor_name, **result}
                print(json.dumps({k: row[k] for k in ("setting", "actor", "num_agents", "relative_variance_shared",
                                                      "relative_variance_guidance")}), flush=True)
                append_jsonl(OUT / "rows.jsonl", [row])
    summarise()


def fit_slope(sizes, values, ses, reps: int = 4000) -> dict:
    """Least-squares slope of log(value) on log(N), and its 95% interval from refits on
    values drawn from each point's normal approximation (log scale, se / value); points
    whose value is not positive, or not resolved (se above value), are left out."""
    sizes, values, ses = (np.asarray(x, np.float64) for x in (sizes, values, ses))
    keep = (values > 0) & (ses < values)
    x, y, s = np.log(sizes[keep]), np.log(values[keep]), ses[keep] / values[keep]
    if keep.sum() < 3:
        return {"slope": None, "ci95": [None, None], "points": int(keep.sum())}
    slope = float(np.polyfit(x, y, 1)[0])
    rng = np.random.default_rng(0)
    draws = [np.polyfit(x, y + rng.normal(0, s), 1)[0] for _ in range(reps)]
    return {"slope": slope, "ci95": [float(np.percentile(draws, 2.5)), float(np.percentile(draws, 97.5))],
            "points": int(keep.sum()), "left_out": [int(n) for n in sizes[~keep]]}


def summarise() -> dict:
    rows = read_rows()
    summary = {}
    for setting in dict.fromkeys(r["setting"] for r in rows):
        for actor in ("initial", "trained"):
            mine = sorted((r for r in rows if r["setting"] == setting and r["actor"] == actor),
                          key=lambda r: r["num_agents"])
            if not mine:
                continue
            sizes = [r["num_agents"] for r in mine]
            summary.setdefault(setting, {})[actor] = {
                name: {"relative_variance_slope": fit_slope(sizes, [r[f"relative_variance_{name}"] for r in mine],
                                                            [r[f"relative_variance_{name}_se"] for r in mine]),
                       "variance_slope": fit_slope(sizes, [r[f"variance_{name}"] for r in mine],
                                                   [r[f"variance_{name}_se"] for r in mine])}
                for name in diagnostics.ESTIMATORS}
    write_json(OUT / "summary.json", summary)
    print(json.dumps(summary, indent=1))
    return summary


def plot() -> None:
    plt = pyplot()

    rows, summary = read_rows(), json.loads((OUT / "summary.json").read_text())
    settings = list(summary)
    fig, axes = plt.subplots(1, len(settings), figsize=(4.6 * len(settings), 4), squeeze=False)
    for ax, setting in zip(axes[0], settings):
        for actor, style in (("initial", "-"), ("trained", "--")):
            mine = sorted((r for r in rows if r["setting"] == setting and r["actor"] == actor),
                          key=lambda r: r["num_agents"])
            for name, colour in (("shared", "tab:red"), ("guidance", "tab:blue")):
                fit = summary[setting].get(actor, {}).get(name, {}).get("relative_variance_slope", {})
                if not mine or fit.get("slope") is None:
                    continue
                n = np.array([r["num_agents"] for r in mine])
                v = np.array([r[f"relative_variance_{name}"] for r in mine])
                se = np.array([r[f"relative_variance_{name}_se"] for r in mine])
                ok = (v > 0) & (se < v)
                low, high = fit["ci95"]
                ax.errorbar(n[ok], v[ok], yerr=se[ok], ls=style, marker="o", ms=3, color=colour, capsize=2,
                            label=f"{name}, {actor}: slope {fit['slope']:.2f} [{low:.2f}, {high:.2f}]")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("agents N")
        ax.set_ylabel("relative variance of one agent's gradient")
        ax.set_title(setting)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    save_figure(fig, FIGURES, "variance_slopes.png")


if __name__ == "__main__":
    parser = experiment_parser(__doc__, OUT, FIGURES, settings=",".join(SETTINGS))
    parser.add_argument("--sizes", default="5,10,20,50,100,200,500,1000,1500")
    parser.add_argument("--rollouts", type=int, default=64)
    args = parser.parse_args()
    OUT, FIGURES = Path(args.out), Path(args.figures)
    if not args.plot:
        run(args.settings.split(","), [int(n) for n in args.sizes.split(",")], args.rollouts)
    plot()
