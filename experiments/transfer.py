"""Scale transfer: DG-PG actors trained at N = 5 and N = 50, evaluated without retraining at
N = 200, 1000 and 1500, next to actors trained at those N, on the same traces.

    python experiments/transfer.py [--settings queueing,paper,in_turn] [--seeds 3] [--episodes 20]
    python experiments/transfer.py --plot      # redraw from results/ only

The actor scores each (job, candidate) pair from features that do not depend on N, so
one set of parameters runs at every size. Each seed's actor trained at N (seeds 0..S-1 of
master seed 0, `episodes` episodes, the setting's defaults) is saved as
results/transfer/<setting>/actors/n<N>.msgpack (`flax.serialization.msgpack_restore`
gives the [S]-batched actor parameters back; a saved N is not retrained), its training
summary in training.jsonl. Every actor of seed s is then evaluated, sampling as in
training, on the 3 episodes after its training days (episodes `episodes`..+2 of seed s's
traces, unseen by every actor), and Best-Fit on the same traces: rows.jsonl holds one row
per (trained at, evaluated at, seed) and summary.json the pooled ratios. Figure:
docs/transfer.png.
"""

import dataclasses
import json
from pathlib import Path

import jax
import numpy as np
from flax import serialization

from common import (ROOT, SETTINGS, append_jsonl, experiment_parser, parse_settings, read_jsonl, save_figure,
                    setting_panels, write_json)
from dgpg_jax import evaluate, runner, train
from dgpg_jax.runlog import json_safe

OUT = ROOT / "results" / "transfer"
FIGURES = ROOT / "docs"
SOURCES = (5, 50)
TARGETS = (200, 1000, 1500)
EVAL_EPISODES = 3


def config(setting: str, n: int, episodes: int) -> train.TrainConfig:
    base = SETTINGS[setting]
    return dataclasses.replace(base, num_episodes=episodes, env=dataclasses.replace(base.env, num_agents=n))


def trained_actors(setting: str, n: int, seeds: int, episodes: int):
    """The [S]-batched actor parameters trained at N = n (trained and saved the first time)."""
    path = OUT / setting / "actors" / f"n{n}.msgpack"
    if not path.exists():
        result = runner.run_training(config(setting, n, episodes), seed=0, num_seeds=seeds)
        path.parent.mkdir(parents=True, exist_ok=True)
        append_jsonl(OUT / setting / "training.jsonl", [json_safe(result.summary())])
        path.write_bytes(serialization.msgpack_serialize(jax.tree.map(np.asarray, result.runner.params["actor"])))
        print(f"{setting}: trained at N={n} in {result.wall_seconds:.0f} s", flush=True)
    return serialization.msgpack_restore(path.read_bytes())


def evaluate_target(setting: str, target: int, seeds: int, episodes: int) -> None:
    """Rows for every actor evaluated at N = target (skipped when already written)."""
    path = OUT / setting / "rows.jsonl"
    if any(row["eval_num_agents"] == target for row in read_jsonl(path)):
        return
    learner = train.make_learner(config(setting, target, episodes))
    task = learner.task
    keys = jax.vmap(train.traces_key)(evaluate.seed_keys(0, seeds))
    policy = lambda params: train.learned_policy(task, learner.actor, params)  # noqa: E731
    run = jax.jit(lambda params: evaluate.evaluate_per_run(policy, params, task, keys, EVAL_EPISODES, episodes))
    reference = jax.tree.map(np.asarray, jax.jit(
        lambda: evaluate.evaluate_reference(task, keys, EVAL_EPISODES, episodes))())
    best = [jax.tree.map(lambda x, s=s: x[s], reference) for s in range(seeds)]
    best_mean = [task.pool(b)["mean_response_time"] for b in best]
    rows = []
    for source in SOURCES + (target,):
        metrics = jax.tree.map(np.asarray, run(trained_actors(setting, source, seeds, episodes)))
        for s in range(seeds):
            mine = jax.tree.map(lambda x, s=s: x[s], metrics)
            rows.append({"train_num_agents": source, "eval_num_agents": target, "seed": s,
                         "ratio_to_best_fit": evaluate.ratio_of_means(task, mine, best[s]), **task.pool(mine),
                         "best_fit_mean_response_time": best_mean[s]})
    append_jsonl(path, json_safe(rows))
    print(f"{setting}: evaluated at N={target}", flush=True)


def summarise(settings: list[str]) -> dict:
    """Per setting and (trained at, evaluated at): the ratio to Best-Fit pooled over seeds
    (mean response time over Best-Fit's), its per-seed values, and the ratio to the actor
    trained at the evaluation N."""
    table: dict[str, list[dict]] = {}
    for setting in settings:
        rows = read_jsonl(OUT / setting / "rows.jsonl")
        pairs = sorted({(r["eval_num_agents"], r["train_num_agents"]) for r in rows})
        pooled = {}
        for target, source in pairs:
            mine = [r for r in rows if (r["eval_num_agents"], r["train_num_agents"]) == (target, source)]
            jobs = np.array([r["num_jobs"] for r in mine])
            mean = float(np.sum(jobs * [r["mean_response_time"] for r in mine]) / jobs.sum())
            best = float(np.sum(jobs * [r["best_fit_mean_response_time"] for r in mine]) / jobs.sum())
            pooled[(target, source)] = {"eval_num_agents": target, "train_num_agents": source, "seeds": len(mine),
                                        "mean_response_time": mean, "ratio_to_best_fit": mean / best,
                                        "ratio_to_best_fit_per_seed": [r["ratio_to_best_fit"] for r in mine]}
        for (target, source), entry in pooled.items():
            home = pooled.get((target, target))
            entry["ratio_to_trained_here"] = None if home is None else entry["mean_response_time"] / home[
                "mean_response_time"]
        table[setting] = list(pooled.values())
    summary = {"sources": list(SOURCES), "targets": list(TARGETS), "eval_episodes": EVAL_EPISODES,
               "by_setting": table}
    write_json(OUT / "summary.json", summary)
    return summary


def plot() -> None:
    summary = json.loads((OUT / "summary.json").read_text())
    fig, panels = setting_panels(summary, 5, 3.6)
    for ax, setting, rows in panels:
        targets = sorted({r["eval_num_agents"] for r in rows})
        for i, label in enumerate([f"trained at N = {n}" for n in summary["sources"]] + ["trained at the same N"]):
            xs, ys = [], []
            for t, target in enumerate(targets):
                source = summary["sources"][i] if i < len(summary["sources"]) else target
                match = [r for r in rows if (r["eval_num_agents"], r["train_num_agents"]) == (target, source)]
                if match:
                    xs.append(t + 0.25 * (i - 1))
                    ys.append(match[0]["ratio_to_best_fit"])
            ax.bar(xs, np.array(ys) - 1, width=0.25, bottom=1, label=label)
        ax.axhline(1.0, color="black", lw=1)
        ax.set_xticks(range(len(targets)), [f"N = {t}" for t in targets])
        ax.set_ylabel("mean response time / Best-Fit")
        ax.set_title(f"{setting}: evaluated at N, same traces")
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=7)
    save_figure(fig, FIGURES, "transfer.png")


if __name__ == "__main__":
    parser = experiment_parser(__doc__, OUT, FIGURES, settings="queueing,paper,in_turn", seeds=3, episodes=20)
    parser.add_argument("--targets", default=",".join(map(str, TARGETS)))
    args = parser.parse_args()
    OUT, FIGURES = Path(args.out), Path(args.figures)
    TARGETS = tuple(int(n) for n in args.targets.split(","))
    settings = parse_settings(args.settings)
    if not args.plot:
        for setting in settings:
            for target in TARGETS:
                evaluate_target(setting, target, args.seeds, args.episodes)
    summarise(settings)
    plot()
