"""The `dgpg` command: eval, train, compare.

    dgpg eval --policy all --num-agents 200 --episodes 3 --seeds 2
    dgpg train --algo dgpg --num-agents 200 --episodes 20 --seeds 2 --out runs/dgpg
    dgpg compare --num-agents 200 --episodes 20 --seeds 2 --out runs/main

Invalid settings end with a one-line message and exit status 2, before any compilation.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import json
import sys
import time
from pathlib import Path

import numpy as np

from dgpg_jax.env import EnvConfig

PRESETS: dict[str, tuple[dict, dict]] = {
    "default": ({}, {}),
    # The paper's setting: backlog dropped every step, coarse steps, uniform candidates,
    # the tracking (`split`) potential, which is aligned exactly there.
    "paper": ({"memoryless": True, "mean_job_steps": 0.6, "candidate_sampling": "uniform"}, {"potential": "split"}),
}
ENV_FLAG_ALIASES = {"num_candidates": ["--candidates"]}


def _field_docs(cls) -> dict[str, str]:
    """The docstring under each field of a dataclass (for --help)."""
    docs, body = {}, ast.parse(inspect.getsource(cls)).body[0].body
    for node, following in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant):
            docs[node.target.id] = " ".join(str(following.value.value).split())
    return docs


def _add_env_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("environment (EnvConfig)")
    docs = _field_docs(EnvConfig)
    for field in dataclasses.fields(EnvConfig):
        flags = ["--" + field.name.replace("_", "-")] + ENV_FLAG_ALIASES.get(field.name, [])
        help_text = f"{docs.get(field.name, '')} (default {field.default})"
        if field.type in (bool, "bool"):
            group.add_argument(*flags, dest=f"env.{field.name}", action=argparse.BooleanOptionalAction,
                               default=argparse.SUPPRESS, help=help_text)
        else:
            kind = {"int": int, "float": float, "str": str}[field.type if isinstance(field.type, str) else field.type.__name__]
            group.add_argument(*flags, dest=f"env.{field.name}", type=kind, default=argparse.SUPPRESS,
                               metavar=field.name.upper(), help=help_text)
    parser.add_argument("--preset", choices=tuple(PRESETS), default="default",
                        help="named setting; explicit flags override it (paper: memoryless, coarse steps, uniform candidates, split potential)")


def _env_config(args) -> EnvConfig:
    env_overrides, _ = PRESETS[args.preset]
    given = {k.split(".", 1)[1]: v for k, v in vars(args).items() if k.startswith("env.")}
    return EnvConfig(**{**env_overrides, **given}).validate()


def _add_run_flags(parser: argparse.ArgumentParser, episodes: int, seeds: int) -> None:
    parser.add_argument("--episodes", type=int, default=episodes, help=f"episodes (days) per seed (default {episodes})")
    parser.add_argument("--seeds", type=int, default=seeds, help=f"seeds run in parallel (default {seeds})")
    parser.add_argument("--seed", type=int, default=0, help="master seed (default 0)")
    parser.add_argument("--json", action="store_true", help="print one JSON object per line instead of a table")


def _check_run_flags(args) -> None:
    for name in ("episodes", "seeds"):
        value = getattr(args, name)
        if value < 1:
            raise ValueError(f"{name}={value!r} is invalid: allowed an integer >= 1")


def _add_train_flags(parser: argparse.ArgumentParser) -> None:
    from dgpg_jax.guidance import POTENTIALS
    from dgpg_jax.train import GUIDANCE_MODES

    group = parser.add_argument_group("training (TrainConfig)")
    group.add_argument("--alpha", type=float, nargs="+", metavar="ALPHA",
                       help="guidance weight: one value = constant, two = linear from the first to the second (default 0.9 0.2)")
    group.add_argument("--alpha-decay-episodes", type=int, help="episodes of the linear alpha decay (default 20)")
    group.add_argument("--potential", choices=tuple(POTENTIALS), help="guidance potential (default area; paper preset: split)")
    group.add_argument("--guidance", choices=GUIDANCE_MODES, help="sampled or exact guidance (default sampled)")
    group.add_argument("--advantage-form", choices=("additive", "convex"), help="how guidance enters (default additive)")
    group.add_argument("--first-order", action="store_true", default=None, help="first-order (autodiff) guidance")
    group.add_argument("--updates-per-episode", type=int, help="PPO updates per episode (default 4)")
    group.add_argument("--learning-rate", type=float, help="Adam learning rate (default 3e-3)")
    group.add_argument("--chunk", type=int, default=1, help="episodes per jitted chunk between progress updates (default 1)")


def _train_config(args, algo: str):
    from dgpg_jax.train import TrainConfig

    _, train_overrides = PRESETS[args.preset]
    fields = dict(train_overrides)
    for name in ("potential", "guidance", "advantage_form", "first_order", "updates_per_episode", "learning_rate",
                 "alpha_decay_episodes"):
        if getattr(args, name) is not None:
            fields[name] = getattr(args, name)
    if args.alpha is not None:
        if len(args.alpha) > 2:
            raise ValueError(f"alpha={args.alpha!r} is invalid: allowed one value (constant) or two (linear start end)")
        fields["alpha_start"] = args.alpha[0]
        fields["alpha_end"] = args.alpha[-1]
        fields["alpha_schedule"] = "constant" if len(args.alpha) == 1 else "linear"
    return TrainConfig(algo=algo, env=_env_config(args), num_episodes=args.episodes, **fields).validate()


# ----------------------------------------------------------------------------- output

def _print_table(rows: list[dict], columns: list[tuple[str, str, str]], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for _, header, _ in columns:
        table.add_column(header, justify="right")
    for row in rows:
        table.add_row(*[("-" if row.get(key) is None else format(row[key], fmt)) if fmt else str(row.get(key, ""))
                        for key, _, fmt in columns])
    console = Console()
    Console(width=max(console.width, 132)).print(table)


def _emit(rows: list[dict], columns, title: str, as_json: bool) -> None:
    """One JSON object per line, or a table."""
    if as_json:
        for row in rows:
            print(json.dumps(row))
    else:
        _print_table(rows, columns, title)


def _progress():
    """A progress bar on stderr, so stdout holds only the table or the JSON lines."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("{task.fields[status]}"), console=Console(stderr=True), transient=False)


EVAL_COLUMNS = [("policy", "policy", ""), ("mean_response_time_in_jobs", "mean RT (jobs)", ".3f"),
                ("p95_response_time_in_jobs", "p95 (jobs)", ".2f"), ("p99_response_time_in_jobs", "p99 (jobs)", ".2f"),
                ("ratio_to_best_fit", "/ Best-Fit", ".3f"), ("rejection_rate", "rejected", ".4f"),
                ("utilisation", "utilisation", ".3f"), ("mean_return", "return", ".1f")]


# ----------------------------------------------------------------------------- eval

def _policies(spec: str, beta: float | None, num_seeds: int):
    """(name, act) pairs for --policy: a name, a comma list, `all`, or checkpoint:DIR."""
    from dgpg_jax import baselines

    names = list(baselines.BASELINES) if spec == "all" else [s for s in spec.split(",") if s]
    if not names:
        raise ValueError(f"policy={spec!r} is invalid: allowed a policy name, a comma list, all, or checkpoint:DIR")
    out = []
    for name in names:
        if name.startswith("checkpoint:"):
            run_dir = Path(name.split(":", 1)[1])
            out.append((name, _checkpoint_policy(run_dir)))
            out.append((name + ":mode", _checkpoint_policy(run_dir, deterministic=True)))
        else:
            out.append((name, baselines.get_policy(name, beta)))
    return out


def _checkpoint_policy(run_dir: Path, deterministic: bool = False):
    import jax

    from dgpg_jax import checkpoint, train
    from dgpg_jax.evaluate import seed_keys

    config, seed, num_seeds = checkpoint.load_config(run_dir)
    learner = train.make_learner(config)
    like = jax.eval_shape(jax.vmap(lambda k: train.init_runner(learner, k, train.default_hyper(config))),
                          seed_keys(seed, num_seeds))
    runner = checkpoint.load_runner(run_dir, like)
    return train.learned_policy(learner.actor, jax.tree.map(lambda x: x[0], runner.params["actor"]), deterministic)


def _metrics_row(name: str, metrics, params, num_agents: int, episodes: int, seeds: int) -> dict:
    m = {k: float(np.mean(v)) for k, v in metrics.__dict__.items()}
    scale = float(params.mean_job_steps)
    return {"policy": name, "num_agents": num_agents, "num_servers": params.num_servers, "episodes": episodes,
            "seeds": seeds, "mean_return": m["episode_return"], "mean_response_time": m["mean_response_time"],
            "mean_response_time_in_jobs": m["mean_response_time_in_jobs"],
            "p95_response_time": m["p95_response_time"], "p99_response_time": m["p99_response_time"],
            "p95_response_time_in_jobs": m["p95_response_time"] / scale,
            "p99_response_time_in_jobs": m["p99_response_time"] / scale,
            "rejection_rate": m["rejection_rate"], "utilisation": m["utilisation"]}


def evaluate_policies(policies, params, run_keys, episodes: int, first_episode: int = 0, progress=None) -> list[dict]:
    """Rows of metrics for each (name, act) on the same traces, with the ratio to Best-Fit."""
    import jax

    from dgpg_jax.evaluate import evaluate

    rows, per_run = [], {}
    task = progress.add_task("evaluating", total=len(policies), status="") if progress else None
    for name, act in policies:
        metrics = jax.jit(lambda k, act=act: evaluate(act, params, k, episodes, first_episode))(run_keys)
        per_run[name] = np.asarray(metrics.mean_response_time)
        rows.append(_metrics_row(name, metrics, params, params.num_agents, episodes, run_keys.shape[0]))
        if progress:
            progress.update(task, advance=1, status=name)
    if "best_fit" not in per_run:
        from dgpg_jax.baselines import BASELINES

        best = jax.jit(lambda k: evaluate(BASELINES["best_fit"], params, k, episodes, first_episode))(run_keys)
        per_run["best_fit"] = np.asarray(best.mean_response_time)
    for row in rows:
        row["ratio_to_best_fit"] = float(np.mean(per_run[row["policy"]] / per_run["best_fit"]))
    return rows


def cmd_eval(args) -> None:
    from dgpg_jax.env import make_params
    from dgpg_jax.evaluate import seed_keys

    _check_run_flags(args)
    env_config = _env_config(args)
    policies = _policies(args.policy, args.beta, args.seeds)
    params = make_params(env_config)
    with _progress() as progress:
        rows = evaluate_policies(policies, params, seed_keys(args.seed, args.seeds), args.episodes,
                                 progress=None if args.json else progress)
    _emit(rows, EVAL_COLUMNS, f"N={env_config.num_agents}, M={params.num_servers}, k={params.num_candidates}, "
          f"{args.episodes} episodes x {args.seeds} seeds, mean_job_steps={env_config.mean_job_steps}", args.json)


# ----------------------------------------------------------------------------- train

def _train_one(config, args, out_dir: Path | None, resume: Path | None, progress):
    from dgpg_jax.runner import run_training

    task = progress.add_task(config.algo, total=config.num_episodes, status="compiling") if progress else None

    def on_chunk(done, logs):
        if progress:
            progress.update(task, completed=done, status=f"ratio to Best-Fit {logs['ratio_to_best_fit'][:, -1].mean():.3f}")

    return run_training(config, args.seed, args.seeds, out_dir, resume, args.chunk, on_chunk)


def _plot_run(result, out_dir: Path, levels: dict[str, float]) -> Path:
    from dgpg_jax.plots import plot_learning_curves

    path = out_dir / "learning_curve.png"
    config = result.config
    plot_learning_curves({config.algo: result.logs["ratio_to_best_fit"]}, levels, path,
                         f"{config.algo}, N={config.env.num_agents}")
    return path


def cmd_train(args) -> None:
    _check_run_flags(args)
    config = _train_config(args, args.algo)
    out_dir = Path(args.out)
    resume = Path(args.resume) if args.resume else None
    with _progress() as progress:
        result = _train_one(config, args, out_dir, resume, None if args.json else progress)
    _plot_run(result, out_dir, {})
    summary = result.summary(args.seeds)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    _emit([summary], TRAIN_COLUMNS, f"{config.algo}, N={config.env.num_agents}; written to {out_dir}", args.json)


TRAIN_COLUMNS = [("algo", "run", ""), ("final_mean_response_time_in_jobs", "mean RT (jobs)", ".3f"),
                 ("final_p99_response_time_in_jobs", "p99 (jobs)", ".2f"), ("final_ratio_to_best_fit", "/ Best-Fit", ".3f"),
                 ("episodes_to_converge", "episodes to converge", ".1f"), ("wall_seconds", "wall s", ".1f"),
                 ("compile_seconds", "compile s", ".1f")]


# ----------------------------------------------------------------------------- compare

def cmd_compare(args) -> None:
    import jax

    from dgpg_jax import baselines, train
    from dgpg_jax.evaluate import seed_keys
    from dgpg_jax.plots import plot_learning_curves
    from dgpg_jax.runner import FINAL_WINDOW

    _check_run_flags(args)
    algos = [a for a in args.algos.split(",") if a]
    configs = [_train_config(args, algo) for algo in algos]
    out_dir = Path(args.out)
    results = {}
    with _progress() as progress:
        for config in configs:
            results[config.algo] = _train_one(config, args, out_dir / config.algo, None, progress)
        params = train.make_learner(configs[0]).env_params
        window = min(FINAL_WINDOW, args.episodes)
        run_keys = jax.vmap(train.episodes_key)(seed_keys(args.seed, args.seeds))
        rows = evaluate_policies([(n, baselines.get_policy(n)) for n in baselines.BASELINES], params, run_keys,
                                 window, args.episodes - window, progress)
    learned = []
    for algo, result in results.items():
        s = result.summary(args.seeds)
        learned.append({"policy": algo, "mean_response_time_in_jobs": s["final_mean_response_time_in_jobs"],
                        "p95_response_time_in_jobs": s["final_p95_response_time_in_jobs"],
                        "p99_response_time_in_jobs": s["final_p99_response_time_in_jobs"],
                        "ratio_to_best_fit": s["final_ratio_to_best_fit"], "episodes_to_converge": s["episodes_to_converge"],
                        "wall_seconds": s["wall_seconds"], "compile_seconds": s["compile_seconds"]})
    table = learned + rows
    plot_learning_curves({a: r.logs["ratio_to_best_fit"] for a, r in results.items()},
                         {r["policy"]: r["ratio_to_best_fit"] for r in rows if r["policy"] in ("greedy", "bestfit_k", "jsq")},
                         out_dir / "learning_curves.png",
                         f"N={configs[0].env.num_agents}, {args.seeds} seeds (preset {args.preset})")
    (out_dir / "summary.json").write_text(json.dumps(table, indent=2) + "\n")
    _emit(table, COMPARE_COLUMNS, f"N={configs[0].env.num_agents}, final {window} of {args.episodes} episodes "
          f"x {args.seeds} seeds, same traces (preset {args.preset}); plot: {out_dir / 'learning_curves.png'}", args.json)


COMPARE_COLUMNS = [("policy", "policy", ""), ("mean_response_time_in_jobs", "mean RT (jobs)", ".3f"),
                   ("p95_response_time_in_jobs", "p95 (jobs)", ".2f"), ("p99_response_time_in_jobs", "p99 (jobs)", ".2f"),
                   ("ratio_to_best_fit", "/ Best-Fit", ".3f"), ("episodes_to_converge", "episodes to converge", ".1f"),
                   ("wall_seconds", "wall s", ".1f"), ("compile_seconds", "compile s", ".1f")]


# ----------------------------------------------------------------------------- main

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dgpg", description="Descent-Guided Policy Gradient for cloud scheduling")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("eval", help="evaluate policies on the same traces")
    p.add_argument("--policy", default="all",
                   help="a policy name, a comma list, all, or checkpoint:DIR (the trained actor of seed 0, "
                        "evaluated sampling as in training and, as checkpoint:DIR:mode, taking its most likely candidate)")
    p.add_argument("--beta", type=float, help="beta of the congestion-aware greedies (default -0.5)")
    _add_run_flags(p, episodes=3, seeds=2)
    _add_env_flags(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("train", help="train one algorithm; writes config, metrics, checkpoint and a plot to --out")
    p.add_argument("--algo", default="dgpg", help="dgpg, mappo or ippo (default dgpg)")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--resume", help="continue the run saved in this directory (same config; more episodes)")
    _add_run_flags(p, episodes=20, seeds=2)
    _add_train_flags(p)
    _add_env_flags(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("compare", help="train several algorithms and evaluate the baselines on the same traces")
    p.add_argument("--algos", default="dgpg,mappo", help="comma list of algorithms (default dgpg,mappo)")
    p.add_argument("--out", default="runs/compare", help="output directory (default runs/compare)")
    _add_run_flags(p, episodes=20, seeds=2)
    _add_train_flags(p)
    _add_env_flags(p)
    p.set_defaults(func=cmd_compare)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except ValueError as error:
        print(f"dgpg {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
