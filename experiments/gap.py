"""The gap to Best-Fit, decomposed into the cost of information (a job's k candidates
against all M servers) and the cost of simultaneity (every job of a step deciding on the
step-start queues against in turn, after the earlier jobs of its step), in the queueing
setting at N = 200.

    python experiments/gap.py [--num-agents 200] [--seeds 3] [--episodes 20]
    python experiments/gap.py --plot      # redraw from results/ only

Grid: mean_job_steps in {0.6, 3, 10, 30} (the decision granularity: jobs per step fall as
it grows; the day is held at 120 mean job times, horizon = 120 mean_job_steps steps, so
every cell sees the same work per day) x candidates drawn uniformly or in proportion to
capacity x k in {2, 4, 8, 16, all}. In every cell the baselines run on the traces of the
final 3 episodes of seeds 0..S-1 of an E-episode run: jsq (JSQ-k, at once), bestfit_k (in
turn among k), greedy_k_simultaneous (at once), greedy_k (in turn among k), greedy (in
turn, all servers) and best_fit (the reference: in turn, all servers). DG-PG is trained
at k = 8 on capacity-weighted candidates at every mean_job_steps, deciding at once (the
`area` potential) and in turn (`light_congestion`), each mode with its default potential.

results/gap/baselines.jsonl holds one row per cell and policy, results/gap/dgpg/<cell>/
one resumable sweep per DG-PG cell and mode; summary.json the ratios of the mean and the
p99 response time to Best-Fit's. Figure: docs/gap.png.
"""

import dataclasses
import json
from pathlib import Path

from common import (ROOT, SETTINGS, append_jsonl, baseline_rows, experiment_parser, pyplot, read_jsonl, run_sweep,
                    save_figure, sweep_table, write_json)
from dgpg_jax import sweep

OUT = ROOT / "results" / "gap"
FIGURES = ROOT / "docs"
MEAN_JOB_STEPS = (0.6, 3.0, 10.0, 30.0)
SAMPLING = ("uniform", "capacity")
CANDIDATES = (2, 4, 8, 16, 0)  # 0: all servers
DAY_JOB_TIMES = 120
POLICIES = ("jsq", "bestfit_k", "greedy_k_simultaneous", "greedy_k", "greedy", "best_fit")
DECISIONS = ("simultaneous", "in_turn")
LEARNED_K = 8
LEARNED_SAMPLING = ("capacity",)  # DG-PG is trained on the default candidates only (time)


def env_config(n: int, mean_job_steps: float, sampling: str, k: int, decisions: str = "simultaneous"):
    return dataclasses.replace(SETTINGS["queueing"].env, num_agents=n, mean_job_steps=mean_job_steps,
                               horizon=round(DAY_JOB_TIMES * mean_job_steps), candidate_sampling=sampling,
                               num_candidates=k if k else 10 * n, decisions=decisions)


def cell_name(mean_job_steps: float, sampling: str, decisions: str) -> str:
    return f"steps{mean_job_steps:g}-{sampling}-{decisions}"


def make_sweep(n: int, mean_job_steps: float, sampling: str, decisions: str, seeds: int, episodes: int):
    base = dataclasses.replace(SETTINGS["queueing"], num_episodes=episodes,  # potential None: the mode's default
                               env=env_config(n, mean_job_steps, sampling, LEARNED_K, decisions))
    return sweep.Sweep(base, algos=("dgpg",), num_agents=(n,), seeds=seeds)


def cell_order(cell: tuple) -> tuple:
    """The default candidates first; within them the two lines through the default cell
    (k at mean_job_steps 10, then mean_job_steps at k = 8), then the rest of the grid."""
    steps, sampling, k = cell
    line = 0 if steps == 10.0 else 1 if k == LEARNED_K else 2
    return sampling != "capacity", line, steps, CANDIDATES.index(k)


def run(n: int, seeds: int, episodes: int) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / "baselines.jsonl"
    done = {(r["mean_job_steps"], r["sampling"], r["k"]) for r in read_jsonl(path)}
    for steps, sampling, k in sorted(((s, c, k) for s in MEAN_JOB_STEPS for c in SAMPLING for k in CANDIDATES),
                                     key=cell_order):
        if (steps, sampling, k) in done:
            continue
        rows = baseline_rows(env_config(n, steps, sampling, k), POLICIES, seeds, episodes)
        append_jsonl(path, [{"mean_job_steps": steps, "sampling": sampling, "k": k, **r} for r in rows])
        print(f"baselines steps={steps:g} {sampling} k={k or 'all'} done", flush=True)
    for steps in MEAN_JOB_STEPS:
        for sampling in LEARNED_SAMPLING:
            for decisions in DECISIONS:
                run_sweep(make_sweep(n, steps, sampling, decisions, seeds, episodes),
                          OUT / "dgpg" / cell_name(steps, sampling, decisions))


def summarise(n: int, seeds: int, episodes: int) -> dict:
    rows = []
    baselines = read_jsonl(OUT / "baselines.jsonl")
    reference = {(r["mean_job_steps"], r["sampling"], r["k"]): r for r in baselines if r["policy"] == "best_fit"}
    for r in baselines:
        ref = reference[(r["mean_job_steps"], r["sampling"], r["k"])]
        rows.append({"policy": r["policy"], "mean_job_steps": r["mean_job_steps"], "sampling": r["sampling"],
                     "k": r["k"], "ratio": r["ratio_to_reference"],
                     "p99_ratio": r["p99_response_time"] / ref["p99_response_time"]})
    for steps in MEAN_JOB_STEPS:
        for sampling in LEARNED_SAMPLING:
            ref = reference.get((steps, sampling, LEARNED_K))
            for decisions in DECISIONS:
                spec = make_sweep(n, steps, sampling, decisions, seeds, episodes)
                for r in sweep_table(spec, OUT / "dgpg" / cell_name(steps, sampling, decisions)):
                    rows.append({"policy": f"dgpg_{decisions}", "mean_job_steps": steps, "sampling": sampling,
                                 "k": LEARNED_K, "ratio": r["final_ratio"], "ratio_ci95": r["final_ratio_ci95"],
                                 "p99_ratio": r["final_p99_response_time"] / ref["p99_response_time"] if ref else None,
                                 "episodes_to_converge": r["episodes_to_converge"], "seeds": r["seeds"]})
    summary = {"num_agents": n, "seeds": seeds, "episodes": episodes, "day_mean_job_times": DAY_JOB_TIMES,
               "rows": rows}
    write_json(OUT / "summary.json", summary)
    return summary


def plot() -> None:
    summary = json.loads((OUT / "summary.json").read_text())
    rows = summary["rows"]
    plt = pyplot()
    fig, axes = plt.subplots(len(SAMPLING), len(MEAN_JOB_STEPS), figsize=(3.3 * len(MEAN_JOB_STEPS), 3.0 * len(SAMPLING)),
                             sharey=True, squeeze=False)
    ks = [k or "all" for k in CANDIDATES]
    for r_i, sampling in enumerate(SAMPLING):
        for c_i, steps in enumerate(MEAN_JOB_STEPS):
            ax = axes[r_i][c_i]
            for policy in POLICIES[:-1]:
                ys = [next((r["ratio"] for r in rows if r["policy"] == policy and r["k"] == k
                            and r["mean_job_steps"] == steps and r["sampling"] == sampling), float("nan"))
                      for k in CANDIDATES]
                ax.plot(range(len(CANDIDATES)), ys, marker="o", ms=3, label=policy)
            for decisions, marker in zip(DECISIONS, ("s", "*")):
                learned = [r for r in rows if r["policy"] == f"dgpg_{decisions}" and r["mean_job_steps"] == steps
                           and r["sampling"] == sampling]
                for r in learned:
                    low, high = r["ratio_ci95"]
                    ax.errorbar([CANDIDATES.index(LEARNED_K)], [r["ratio"]], yerr=[[r["ratio"] - low], [high - r["ratio"]]],
                                fmt=marker,
                                color="black" if decisions == "in_turn" else "grey", ms=8, label=f"DG-PG, {decisions}")
            ax.axhline(1.0, color="black", lw=1)
            ax.set_yscale("log")  # herding at once with every server in view reaches 27x
            ax.set_xticks(range(len(CANDIDATES)), ks)
            ax.set_title(f"mean_job_steps {steps:g}, {sampling}", fontsize=9)
            ax.grid(True, alpha=0.3)
            if c_i == 0:
                ax.set_ylabel("mean response time / Best-Fit")
            if r_i == len(SAMPLING) - 1:
                ax.set_xlabel("candidates k")
    axes[0][0].legend(fontsize=6)
    fig.suptitle(f"The gap to Best-Fit at N = {summary['num_agents']} ({summary['seeds']} seeds)", fontsize=10)
    save_figure(fig, FIGURES, "gap.png")


def main() -> None:
    global OUT, FIGURES
    parser = experiment_parser(__doc__, OUT, FIGURES, seeds=3, episodes=20)
    parser.add_argument("--num-agents", type=int, default=200)
    args = parser.parse_args()
    OUT, FIGURES = Path(args.out), Path(args.figures)
    if not args.plot:
        run(args.num_agents, args.seeds, args.episodes)
    summarise(args.num_agents, args.seeds, args.episodes)
    plot()


if __name__ == "__main__":
    main()
