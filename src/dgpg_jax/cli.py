"""The `dgpg` command: eval, train, compare, sweep, variance.

    dgpg eval --policy all --num-agents 200 --episodes 3 --seeds 2
    dgpg train --algo dgpg --num-agents 200 --episodes 20 --seeds 2 --out runs/dgpg
    dgpg compare --num-agents 200 --episodes 20 --seeds 2 --out runs/main
    dgpg sweep --algo dgpg,mappo --num-agents 20,200 --episodes 20 --seeds 64 --grid alpha=0.2,0.6 --out runs/sweep
    dgpg train --task ev-charging --num-agents 50 --episodes 10 --out runs/ev
    dgpg variance --num-agents 200 --rollouts 64 [--checkpoint runs/dgpg]

`--task` picks the system (cloud-scheduling by default, or ev-charging); the environment
flags are those of its config (`dgpg train --task ev-charging --help`). Invalid settings
end with a one-line message and exit status 2, before any compilation.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import json
import math
import os
import sys
from pathlib import Path

from dgpg_jax import registry

ENV_FLAG_ALIASES = {"num_candidates": ["--candidates"]}
FLAG_TYPES = {"int": int, "float": float, "str": str, "int | None": int, "tuple[float, ...]": float}


def _field_docs(cls) -> dict[str, str]:
    """The docstring under each field of a dataclass (for --help)."""
    docs, body = {}, ast.parse(inspect.getsource(cls)).body[0].body
    for node, following in zip(body, body[1:]):
        documented = isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant)
        if isinstance(node, ast.AnnAssign) and documented:
            docs[node.target.id] = " ".join(str(following.value.value).split())
    return docs


def _add_env_flags(parser: argparse.ArgumentParser, task: str) -> None:
    parser.add_argument("--task", default=registry.DEFAULT_TASK,
                        help=f"the system: one of {', '.join(registry.TASKS)} (default {registry.DEFAULT_TASK}), or "
                             "module:ConfigClass of your own; the flags below are this task's")
    config_class = registry.config_class(task)
    group = parser.add_argument_group(f"environment ({config_class.__name__}, task {task})")
    docs = _field_docs(config_class)
    for field in dataclasses.fields(config_class):
        flags = ["--" + field.name.replace("_", "-")] + ENV_FLAG_ALIASES.get(field.name, [])
        help_text = f"{docs.get(field.name, '')} (default {field.default})"
        if field.type in (bool, "bool"):
            group.add_argument(*flags, dest=f"env.{field.name}", action=argparse.BooleanOptionalAction,
                               default=argparse.SUPPRESS, help=help_text)
        else:
            type_name = field.type if isinstance(field.type, str) else field.type.__name__
            many = type_name.startswith("tuple")
            group.add_argument(*flags, dest=f"env.{field.name}", type=FLAG_TYPES[type_name], nargs="+" if many else None,
                               default=argparse.SUPPRESS, metavar=field.name.upper(), help=help_text)
    presets = registry.presets(config_class)
    parser.add_argument("--preset", default="default",
                        help=f"a named setting of the task; explicit flags override it ({', '.join(presets)})")


def _env_config(args):
    env_class = registry.config_class(args.task)
    presets = registry.presets(env_class)
    if args.preset not in presets:
        raise ValueError(f"preset={args.preset!r} is invalid for the {args.task} task: allowed one of {tuple(presets)}")
    env_overrides, _ = presets[args.preset]
    given = {k.split(".", 1)[1]: tuple(v) if isinstance(v, list) else v
             for k, v in vars(args).items() if k.startswith("env.")}
    return env_class(**{**env_overrides, **given}).validate()


def _add_run_flags(parser: argparse.ArgumentParser, episodes: int, seeds: int,
                   seed_help: str = "master seed: the runs' keys are split from it (default 0)") -> None:
    parser.add_argument("--episodes", type=int, default=episodes, help=f"episodes (days) per seed (default {episodes})")
    parser.add_argument("--seeds", type=int, default=seeds, help=f"seeds run in parallel (default {seeds})")
    parser.add_argument("--seed", type=int, default=0, help=seed_help)
    parser.add_argument("--json", action="store_true", help="print one JSON object per line instead of a table")


def _check_run_flags(args) -> None:
    from dgpg_jax.validation import check_integer, check_seeds

    for name in ("episodes",) + (("episodes_per_call",) if hasattr(args, "episodes_per_call") else ()):
        check_integer(name, getattr(args, name))
    check_seeds(args.seeds, args.seed)


def _add_train_flags(parser: argparse.ArgumentParser, task: str) -> None:
    from dgpg_jax.train import GUIDANCE_MODES

    potentials = registry.potential_names(registry.config_class(task))
    group = parser.add_argument_group("training (TrainConfig)")
    group.add_argument("--alpha", type=float, nargs="+", metavar="ALPHA",
                       help="guidance weight: one value = constant, two = linear from the first to the second "
                            "(default 0.9 0.2)")
    group.add_argument("--alpha-decay-episodes", type=int, help="episodes of the linear alpha decay (default 20)")
    group.add_argument("--potential", choices=potentials, help="guidance potential (default: the task's own)")
    group.add_argument("--guidance", choices=GUIDANCE_MODES, help="sampled or exact guidance (default sampled)")
    group.add_argument("--advantage-form", choices=("additive", "convex"),
                       help="how guidance enters (default additive)")
    group.add_argument("--first-order", action="store_true", default=None, help="first-order (autodiff) guidance")
    group.add_argument("--updates-per-episode", type=int, help="PPO updates per episode (default 4)")
    group.add_argument("--learning-rate", type=float, help="Adam learning rate (default 3e-3)")
    group.add_argument("--episodes-per-call", type=int, default=1,
                       help="episodes per jitted call, between progress updates and checkpoints (default 1)")


def _add_log_flag(parser: argparse.ArgumentParser) -> None:
    from dgpg_jax.trackers import TRACKERS

    parser.add_argument("--log", default="none", choices=TRACKERS,
                        help="also send the per-episode metrics to TensorBoard (pip extra tensorboard) or to W&B "
                             "offline (extra wandb), under OUT/logs (default none)")


def _train_config(args, algo: str):
    from dgpg_jax.train import TrainConfig

    _, train_overrides = registry.presets(registry.config_class(args.task))[args.preset]
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
        from dgpg_jax.runlog import json_safe

        for row in rows:
            print(json.dumps(json_safe(row), allow_nan=False))
    else:
        _print_table(rows, columns, title)


class RunFailed(Exception):
    """A run that ended without usable results (exit status 1, one line)."""


def _check_finite(rows: list[dict], columns, label: str) -> None:
    """RunFailed when a figure of the printed table is NaN or infinite: numbers that
    overflowed are a failed run, not a result."""
    for row in rows:
        for key, header, fmt in columns:
            value = row.get(key)
            if fmt and isinstance(value, float) and not math.isfinite(value):
                raise RunFailed(f"{header} ({key}) of {row.get(label)} is {value}: the setting is outside what "
                                "float32 computes; allowed settings whose results are finite")


def _progress():
    """A progress bar on stderr, so stdout holds only the table or the JSON lines."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("{task.fields[status]}"), console=Console(stderr=True), transient=True)


# ----------------------------------------------------------------------------- eval

def _comma_list(name: str, spec: str, allowed: str) -> list[str]:
    """The items of a comma list, refused when empty or repeated."""
    items = [item.strip() for item in spec.split(",")]
    if not spec.strip() or any(not item for item in items):
        raise ValueError(f"{name}={spec!r} is invalid: allowed {allowed}, comma separated, none empty")
    repeated = sorted({item for item in items if items.count(item) > 1})
    if repeated:
        raise ValueError(f"{name}={spec!r} is invalid: {repeated[0]!r} appears twice; allowed each at most once")
    return items


def _policies(spec: str, beta: float | None, task, view, task_name: str):
    """(name, act) pairs for --policy: a name, a comma list, `all`, or checkpoint:DIR."""
    from dgpg_jax import checkpoint, train

    allowed = f"policy names ({', '.join(task.baselines)}), all, or checkpoint:DIR"
    names = list(task.baselines) if spec == "all" else _comma_list("policy", spec, allowed)
    if beta is not None and view.make_policy is None:
        raise ValueError(f"beta={beta!r} is invalid for the {task.name} task: it sets the congestion-aware "
                         f"greedies of {registry.DEFAULT_TASK}")
    if beta is not None and not any(name in view.beta_policies for name in names):
        raise ValueError(f"beta={beta!r} is invalid here: it sets the congestion-aware greedies "
                         f"{view.beta_policies}, and --policy {spec!r} has none of them")
    out = []
    for name in names:
        if name.startswith("checkpoint:"):
            run_dir = name.split(":", 1)[1]
            if not run_dir:
                raise ValueError(f"policy={name!r} is invalid: "
                                 "allowed checkpoint:DIR with DIR a `dgpg train` directory")
            actor, actor_params = checkpoint.load_actor(Path(run_dir), task_name)
            out.append((name, train.learned_policy(task, actor, actor_params)))
            out.append((name + ":mode", train.learned_policy(task, actor, actor_params, deterministic=True)))
        elif name not in task.baselines:
            raise ValueError(f"policy={name!r} is invalid: allowed {allowed}")
        elif view.make_policy is not None:
            out.append((name, view.make_policy(name, beta)))  # beta applies to the greedies only
        else:
            out.append((name, task.baselines[name]))
    return out


def _setting(env_config) -> str:
    """The sizes of a run, for table titles."""
    sizes = [f"N={env_config.num_agents}"]
    if hasattr(env_config, "num_servers"):
        sizes.append(f"M={env_config.num_servers}")
    if hasattr(env_config, "num_candidates"):
        sizes.append(f"k={env_config.num_candidates}")
    return ", ".join(sizes + [f"T={env_config.horizon}"])


def cmd_eval(args) -> None:
    from dgpg_jax.evaluate import evaluate_policies, seed_keys
    from dgpg_jax.view import view_of

    from dgpg_jax.validation import check_seeds

    _check_run_flags(args)
    env_config = _env_config(args)
    task = env_config.make_task()
    check_seeds(args.seeds, args.seed, task.episode_rows)
    view = view_of(env_config, task)
    policies = _policies(args.policy, args.beta, task, view, registry.task_name(env_config))
    with _progress() as progress:
        bar = progress.add_task("evaluating", total=1, status=f"{len(policies)} policies in one program")
        rows = evaluate_policies(policies, task, seed_keys(args.seed, args.seeds), args.episodes)
        progress.update(bar, advance=1)
    _emit(rows, view.eval_columns, f"{task.name}, {_setting(env_config)}, {args.episodes} episodes x {args.seeds} "
          f"seeds; {view.units}", args.json)
    _check_finite(rows, view.eval_columns, "policy")


# ----------------------------------------------------------------------------- train

def _on_progress(progress, reference: str, episodes: int):
    """A progress callback `(algo, done, logs)` drawing one bar per algorithm."""
    bars = {}

    def on_progress(algo, done, logs):
        if algo not in bars:
            bars[algo] = progress.add_task(algo, total=episodes, status="compiling")
        if logs is not None:
            progress.update(bars[algo], completed=done, status=f"ratio to {reference} "
                            f"{logs.ratio_to_reference[:, -1].mean():.3f}")

    return on_progress


def cmd_train(args) -> None:
    from dgpg_jax import rundir
    from dgpg_jax.plots import plot_learning_curves
    from dgpg_jax.runlog import FINAL_WINDOW, json_safe
    from dgpg_jax.runner import run_training
    from dgpg_jax.trackers import check_tracker
    from dgpg_jax.view import RUN_COLUMNS, view_of

    _check_run_flags(args)
    check_tracker(args.log)  # its extra installed, before any directory or compile
    config = _train_config(args, args.algo)
    if args.resume is not None and not args.resume.strip():
        raise ValueError("resume='' is invalid: allowed a `dgpg train` directory")
    view = view_of(config.env, config.env.make_task())
    with _progress() as progress:  # --out as given: '' is refused, not taken for the current directory
        on_progress = _on_progress(progress, view.reference, config.num_episodes)
        on_progress(config.algo, 0, None)
        result = run_training(config, args.seed, args.seeds, args.out, Path(args.resume) if args.resume else None,
                              args.episodes_per_call, lambda done, logs: on_progress(config.algo, done, logs),
                              args.log, args.overwrite)
    out_dir = Path(args.out)
    plot_learning_curves({config.algo: result.logs.ratio_to_reference}, {}, out_dir / "learning_curve.png",
                         f"{config.algo}, {result.task.name}, N={config.env.num_agents}",
                         result.task.reference_name, view.ylabel)
    summary = result.summary()
    rundir.write_json(out_dir / "summary.json", json_safe(summary))
    columns = [("algo", "run", "")] + [(_final_key(key, result.task), header, fmt)
                                       for key, header, fmt in view.summary_columns] + RUN_COLUMNS
    _emit([summary], columns, f"{config.algo}, {result.task.name}, {_setting(config.env)}; final {FINAL_WINDOW} "
          f"episodes; {view.units}; written to {out_dir}", args.json)
    _check_finite([summary], columns, "algo")


def _final_key(key: str, task) -> str:
    """The summary key of a pooled metric or ratio: final_<key>, <reference>_final_<metric>."""
    prefix = task.reference_name + "_"
    if key.startswith(prefix):
        return f"{prefix}final_{key.removeprefix(prefix)}"
    return f"final_{key}"


# ----------------------------------------------------------------------------- compare

def cmd_compare(args) -> None:
    from dgpg_jax import algorithms
    from dgpg_jax.compare import run_compare
    from dgpg_jax.runlog import FINAL_WINDOW
    from dgpg_jax.view import RUN_COLUMNS, view_of

    _check_run_flags(args)
    algos = _comma_list("algos", args.algos, f"algorithm names {algorithms.ALGORITHMS}")
    configs = [_train_config(args, algo) for algo in algos]
    env = configs[0].env
    view = view_of(env, env.make_task())
    title = f"{registry.task_name(env)}, N={env.num_agents}, {args.seeds} seeds (preset {args.preset})"
    with _progress() as progress:
        results, table = run_compare(configs, args.seed, args.seeds, args.out, args.episodes_per_call,
                                     _on_progress(progress, view.reference, args.episodes), getattr(args, "log", "none"),
                                     args.overwrite, view.plotted, view.ylabel, title)
    task = next(iter(results.values())).task
    window = min(FINAL_WINDOW, args.episodes)
    columns = [("policy", "policy", "")] + [c for c in view.summary_columns if not c[0].startswith(
        task.reference_name + "_")] + RUN_COLUMNS
    _emit(table, columns, f"{task.name}, {_setting(env)}, final {window} of {args.episodes} episodes "
          f"x {args.seeds} seeds, same traces (preset {args.preset}); {view.units}; "
          f"plot: {Path(args.out) / 'learning_curves.png'}", args.json)
    _check_finite(table, columns, "policy")


# ----------------------------------------------------------------------------- sweep

def cmd_sweep(args) -> None:
    from dgpg_jax import algorithms, distributed, rundir, sweep
    from dgpg_jax.trackers import check_tracker

    _check_run_flags(args)
    check_tracker(args.log)
    if args.episodes_per_call != 1:
        raise ValueError(f"episodes_per_call={args.episodes_per_call!r} is invalid for a sweep: a chunk runs all "
                         "its episodes in one program; allowed 1 (the default)")
    algos = _comma_list("algo", args.algo, f"algorithm names {algorithms.ALGORITHMS}")
    sizes = _comma_list("num_agents", args.num_agents, "integers >= 1")
    if not all(size.isdigit() for size in sizes):
        raise ValueError(f"num_agents={args.num_agents!r} is invalid: allowed integers >= 1, comma separated")
    grid = []
    for spec in args.grid or []:
        name, equals, values = spec.partition("=")
        if not equals or not name.strip():
            raise ValueError(f"grid={spec!r} is invalid: allowed NAME=v1,v2,... with NAME one of {sweep.GRID_NAMES}")
        items = _comma_list(f"grid {name.strip()}", values, "numbers")
        try:
            grid.append((name.strip(), tuple(float(item) for item in items)))
        except ValueError:
            raise ValueError(f"grid {name.strip()}={values!r} is invalid: allowed numbers, comma separated") from None
    base = _train_config(args, algos[0])
    spec = sweep.Sweep(base, algos=tuple(algos), num_agents=tuple(int(size) for size in sizes), grid=tuple(grid),
                       seeds=args.seeds, seed=args.seed).validate()
    several = (args.coordinator_address, args.num_processes, args.process_id)
    if args.distributed or any(flag is not None for flag in several):
        distributed.initialize(*several)  # after the checks (they touch no JAX), before any program
    main_process = distributed.is_main()  # the other processes run silently
    with rundir.open_run(args.out, "sweep", continues=True, lock=main_process):  # refused before the progress bar
        _sweep(args, spec, main_process)


def _sweep(args, spec, main_process: bool) -> None:
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    from dgpg_jax import sweep
    from dgpg_jax.runlog import FINAL_WINDOW
    from dgpg_jax.view import view_of

    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        TextColumn("ETA"), TimeRemainingColumn(), TextColumn("{task.fields[status]}"),
                        console=Console(stderr=True), transient=False, disable=not main_process)
    with progress:
        task = progress.add_task("sweep chunks", total=None, status="planning")

        def on_progress(event):
            if event["event"] == "planned":
                progress.update(task, total=max(event["total"] - event["skipped"], 1),
                                status=f"{event['skipped']} chunks already done")
            elif event["event"] == "compiling":
                progress.update(task, status=f"compiling {event['group']}")
            elif event["event"] == "stale":
                progress.console.print(f"set aside and run again: {event['reason']} (moved to {event['path']})")
            else:
                progress.update(task, advance=1, status=f"{event['group']} chunk {event['index']} written")

        result = sweep.run_sweep(spec, args.out, chunk_seeds=args.chunk_seeds, on_progress=on_progress,
                                 bootstrap_reps=args.bootstrap_reps, log=args.log)
    if not main_process:
        return
    if args.json:
        print(json.dumps(result, allow_nan=False))
        return
    view = view_of(spec.base.env, spec.base.env.make_task())
    names = [f"grid_{name}" for name in spec.grid_names]
    rows = [{**c, "ci_low": c["final_ratio_to_reference_ci95"][0], "ci_high": c["final_ratio_to_reference_ci95"][1]}
            for c in result["configurations"]]
    columns = ([("algo", "algo", ""), ("num_agents", "N", "")] + [(n, n.removeprefix("grid_"), "g") for n in names]
               + [("seeds_done", "seeds", ""), ("final_ratio_to_reference_mean", f"/ {view.reference} mean", ".3f"),
                  ("ci_low", "CI low", ".3f"), ("ci_high", "CI high", ".3f"),
                  ("final_ratio_to_reference_iqm", "IQM", ".3f")] + view.sweep_columns
               + [("episodes_to_converge_mean", "episodes to converge", ".1f")])
    _emit(rows, columns, f"sweep: {result['chunks_run']} chunks run, {result['chunks_skipped']} skipped; final "
          f"{FINAL_WINDOW} episodes, per-seed ratio to {view.reference}, 95% stratified-bootstrap CI (rliable); "
          f"{view.units}; written to {args.out}", False)


# ----------------------------------------------------------------------------- variance

def cmd_variance(args) -> None:
    from dgpg_jax import checkpoint, diagnostics
    from dgpg_jax.validation import SEED_MAX, check_integer

    check_integer("rollouts", args.rollouts, minimum=4)
    if args.baseline_rollouts is not None:
        check_integer("baseline_rollouts", args.baseline_rollouts)
    check_integer("seed", args.seed, minimum=0, maximum=SEED_MAX)
    if args.updates_per_episode is None:  # the PPO segments play no part here: one, so that any even horizon is valid
        args.updates_per_episode = 1
    config = _train_config(args, "dgpg")
    actor = None
    if args.checkpoint is not None:
        if not args.checkpoint.strip() or not Path(args.checkpoint, "config.json").exists():
            raise ValueError(f"checkpoint={args.checkpoint!r} is invalid: allowed a `dgpg train` directory")
        actor = checkpoint.load_actor(Path(args.checkpoint), args.task)
    with _progress() as progress:
        progress.add_task(f"variance at N={config.env.num_agents}", total=None, status=f"{args.rollouts} rollouts")
        result = diagnostics.measure(config, rollouts=args.rollouts, seed=args.seed, actor=actor,
                                     baseline_rollouts=args.baseline_rollouts, traces=args.traces)
    result["checkpoint"] = args.checkpoint
    if args.json:
        _emit([result], [], "", True)
        return
    rows = [{"estimator": name, **{q: result[f"{q}_{name}"] for q in ("relative_variance", "variance", "mean_sq_norm")},
             **{f"{q}_se": result[f"{q}_{name}_se"] for q in ("relative_variance", "variance", "mean_sq_norm")}}
            for name in diagnostics.ESTIMATORS]
    columns = [("estimator", "advantage", ""), ("relative_variance", "relative variance", ".4g"),
               ("relative_variance_se", "SE", ".2g"), ("variance", "variance", ".4g"), ("variance_se", "SE", ".2g"),
               ("mean_sq_norm", "|mean|^2", ".4g"), ("mean_sq_norm_se", "SE", ".2g")]
    _emit(rows, columns, f"per-agent policy-gradient variance, {args.task} N={result['num_agents']}, "
          f"{args.rollouts} rollouts on {args.traces} traces, "
          f"{'checkpoint ' + args.checkpoint if args.checkpoint else 'initial actor of seed ' + str(args.seed)}; "
          "relative variance = trace of one agent's covariance / squared norm of the mean", False)


# ----------------------------------------------------------------------------- main

def build_parser(task: str = registry.DEFAULT_TASK) -> argparse.ArgumentParser:
    """The parser whose environment flags are those of `task`'s config."""
    parser = argparse.ArgumentParser(prog="dgpg", description="Descent-Guided Policy Gradient for cooperative "
                                     "multi-agent systems (cloud scheduling, EV charging)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("eval", help="evaluate policies on the same traces")
    p.add_argument("--policy", default="all",
                   help="a policy name, a comma list, all, or checkpoint:DIR (the trained actor of seed 0, "
                        "evaluated sampling as in training and, as checkpoint:DIR:mode, "
                        "taking its most likely candidate)")
    p.add_argument("--beta", type=float, help="beta of the congestion-aware greedies (default -0.5)")
    _add_run_flags(p, episodes=3, seeds=2)
    _add_env_flags(p, task)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("train", help="train one algorithm; writes config, metrics, checkpoint and a plot to --out")
    p.add_argument("--algo", default="dgpg", help="dgpg, mappo or ippo (default dgpg)")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--resume", help="continue the run saved in this directory (same config; more episodes)")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    _add_log_flag(p)
    _add_run_flags(p, episodes=20, seeds=2)
    _add_train_flags(p, task)
    _add_env_flags(p, task)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("compare", help="train several algorithms and evaluate the baselines on the same traces")
    p.add_argument("--algos", default="dgpg,mappo", help="comma list of algorithms (default dgpg,mappo)")
    p.add_argument("--out", default="runs/compare", help="output directory (default runs/compare)")
    p.add_argument("--overwrite", action="store_true", help="replace runs already in --out")
    _add_run_flags(p, episodes=20, seeds=2)
    _add_train_flags(p, task)
    _add_env_flags(p, task)
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("sweep", conflict_handler="resolve",
                       help="seeds x grid x algorithms x N in memory-sized chunks over every device; resumable")
    p.add_argument("--algo", default="dgpg", help="comma list of algorithms (default dgpg)")
    p.add_argument("--out", required=True, help="sweep directory (a restart with the same arguments continues it)")
    p.add_argument("--grid", action="append", metavar="NAME=V1,V2",
                   help="values of a traced setting (alpha, alpha_start, alpha_end, learning_rate, utilisation); "
                        "repeat for a cartesian product")
    p.add_argument("--chunk-seeds", type=int,
                   help="runs (grid point x seed) per chunk (default: from the compiled program's memory analysis)")
    p.add_argument("--bootstrap-reps", type=int, default=2000, help="bootstrap replications of the CIs (default 2000)")
    _add_log_flag(p)
    group = p.add_argument_group("several processes (jax.distributed: one process per host, the same command on each)")
    group.add_argument("--coordinator-address", metavar="HOST:PORT",
                       help="process 0's address (default $JAX_COORDINATOR_ADDRESS or the SLURM / Open MPI job)")
    group.add_argument("--num-processes", type=int, help="processes in all (default from the cluster)")
    group.add_argument("--process-id", type=int, help="this process's index in [0, num_processes)")
    group.add_argument("--distributed", action="store_true",
                       help="start jax.distributed with every setting from the environment (SLURM, Open MPI)")
    _add_run_flags(p, episodes=20, seeds=8, seed_help="first seed: the runs are seeds SEED .. SEED + SEEDS - 1, each "
                   "the master seed of one run, so a sweep's seed s is `dgpg train --seed s --seeds 1` (default 0)")
    _add_train_flags(p, task)
    _add_env_flags(p, task)
    p.add_argument("--num-agents", default="20", help="comma list of N (default 20)")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("variance", help="per-agent policy-gradient variance: shared return against guidance")
    p.add_argument("--rollouts", type=int, default=64, help="independent rollouts R (default 64, at least 4)")
    p.add_argument("--baseline-rollouts", type=int,
                   help="further rollouts giving the per-step baseline of the shared return (default R)")
    p.add_argument("--traces", choices=("same", "independent"), default="same",
                   help="every rollout on the same day (default) or each on its own")
    p.add_argument("--checkpoint", help="a `dgpg train` directory: its trained actor (default the initial one)")
    p.add_argument("--seed", type=int, default=0, help="seed of the initial actor and of the rollouts (default 0)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON line")
    _add_train_flags(p, task)
    _add_env_flags(p, task)
    p.set_defaults(func=cmd_variance, episodes=1)
    return parser


CACHE_VARIABLE = "DGPG_COMPILATION_CACHE"


def enable_compilation_cache() -> str | None:
    """Turn on JAX's persistent compilation cache, so that a repeated command compiles
    nothing: in $DGPG_COMPILATION_CACHE if set ("off" turns it off), else in the user's
    cache directory ($XDG_CACHE_HOME or ~/.cache, then dgpg_jax/xla). Returns the path."""
    import os

    import jax

    setting = os.environ.get(CACHE_VARIABLE, "")
    if setting.lower() == "off":
        return None
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    path = setting or os.path.join(base, "dgpg_jax", "xla")
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)  # skip only trivial programs
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path


def _task_of(argv: list[str] | None) -> str:
    """The --task of a command line (the default when absent or unknown: the full parser
    then refuses an unknown one with the allowed choices)."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--task", default=registry.DEFAULT_TASK)
    name = pre.parse_known_args(argv)[0].task
    try:
        registry.config_class(name)
    except ValueError:
        return registry.DEFAULT_TASK
    return name


def _env_flags(task: str) -> set[str]:
    """The environment flags of `task` (those of its config's fields)."""
    return {flag for field in dataclasses.fields(registry.config_class(task))
            for flag in ["--" + field.name.replace("_", "-")] + ENV_FLAG_ALIASES.get(field.name, [])}


def _other_task_flag(task: str, unknown: list[str]) -> str | None:
    """A one-line refusal of an unknown flag that is another task's environment flag."""
    for flag in (item.split("=", 1)[0] for item in unknown if item.startswith("--")):
        owners = [name for name in registry.TASKS if name != task and flag in _env_flags(name)]
        if owners:
            return (f"{flag} is a flag of the {owners[0]} task, not of {task}: allowed with --task {owners[0]}, "
                    f"or the flags that `--task {task} --help` lists")
    return None


def main(argv: list[str] | None = None) -> int:
    import logging

    logging.getLogger("absl").setLevel(logging.CRITICAL)  # orbax's threads log each fault the CLI reports once
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # --task module:Config finds a module of the current directory
    task = _task_of(argv)
    parser = build_parser(task)
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        message = _other_task_flag(task, unknown)
        if message is None:
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
        print(f"dgpg {args.command}: error: {message}", file=sys.stderr)
        return 2
    enable_compilation_cache()
    try:
        args.func(args)
    except ValueError as error:
        print(f"dgpg {args.command}: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        from dgpg_jax.rundir import describe_os_error

        print(f"dgpg {args.command}: error: {describe_os_error(error)}", file=sys.stderr)
        return 1
    except RunFailed as error:
        print(f"dgpg {args.command}: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
