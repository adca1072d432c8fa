"""The `dgpg` commands, thin: each checks its arguments, calls the library and prints."""

from __future__ import annotations

import json
from pathlib import Path

from dgpg_jax import registry
from dgpg_jax.cli.output import check_finite, emit, progress_bar
from dgpg_jax.cli.parser import check_run_flags, comma_list, make_env_config, make_train_config


def _policies(spec: str, beta: float | None, task, view, task_name: str):
    """(name, act) pairs for --policy: a name, a comma list, `all`, or checkpoint:DIR."""
    from dgpg_jax import checkpoint, train

    allowed = f"policy names ({', '.join(task.baselines)}), all, or checkpoint:DIR"
    names = list(task.baselines) if spec == "all" else comma_list("policy", spec, allowed)
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

    check_run_flags(args)
    env_config = make_env_config(args)
    task = env_config.make_task()
    check_seeds(args.seeds, args.seed, task.episode_rows)
    view = view_of(env_config, task)
    policies = _policies(args.policy, args.beta, task, view, registry.task_name(env_config))
    with progress_bar() as progress:
        bar = progress.add_task("evaluating", total=1, status=f"{len(policies)} policies in one program")
        rows = evaluate_policies(policies, task, seed_keys(args.seed, args.seeds), args.episodes)
        progress.update(bar, advance=1)
    emit(rows, view.eval_columns, f"{task.name}, {_setting(env_config)}, {args.episodes} episodes x {args.seeds} "
          f"seeds; {view.units}", args.json)
    check_finite(rows, view.eval_columns, "policy")


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

    check_run_flags(args)
    check_tracker(args.log)  # its extra installed, before any directory or compile
    config = make_train_config(args, args.algo)
    if args.resume is not None and not args.resume.strip():
        raise ValueError("resume='' is invalid: allowed a `dgpg train` directory")
    view = view_of(config.env, config.env.make_task())
    with progress_bar() as progress:  # --out as given: '' is refused, not taken for the current directory
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
    emit([summary], columns, f"{config.algo}, {result.task.name}, {_setting(config.env)}; final {FINAL_WINDOW} "
          f"episodes; {view.units}; written to {out_dir}", args.json)
    check_finite([summary], columns, "algo")


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

    check_run_flags(args)
    algos = comma_list("algos", args.algos, f"algorithm names {algorithms.ALGORITHMS}")
    configs = [make_train_config(args, algo) for algo in algos]
    env = configs[0].env
    view = view_of(env, env.make_task())
    title = f"{registry.task_name(env)}, N={env.num_agents}, {args.seeds} seeds (preset {args.preset})"
    with progress_bar() as progress:
        results, table = run_compare(configs, args.seed, args.seeds, args.out, args.episodes_per_call,
                                     _on_progress(progress, view.reference, args.episodes), getattr(args, "log", "none"),
                                     args.overwrite, view.plotted, view.ylabel, title)
    task = next(iter(results.values())).task
    window = min(FINAL_WINDOW, args.episodes)
    columns = [("policy", "policy", "")] + [c for c in view.summary_columns if not c[0].startswith(
        task.reference_name + "_")] + RUN_COLUMNS
    emit(table, columns, f"{task.name}, {_setting(env)}, final {window} of {args.episodes} episodes "
          f"x {args.seeds} seeds, same traces (preset {args.preset}); {view.units}; "
          f"plot: {Path(args.out) / 'learning_curves.png'}", args.json)
    check_finite(table, columns, "policy")


# ----------------------------------------------------------------------------- sweep

def cmd_sweep(args) -> None:
    from dgpg_jax import algorithms, distributed, rundir, sweep
    from dgpg_jax.trackers import check_tracker

    check_run_flags(args)
    check_tracker(args.log)
    if args.episodes_per_call != 1:
        raise ValueError(f"episodes_per_call={args.episodes_per_call!r} is invalid for a sweep: a chunk runs all "
                         "its episodes in one program; allowed 1 (the default)")
    algos = comma_list("algo", args.algo, f"algorithm names {algorithms.ALGORITHMS}")
    sizes = comma_list("num_agents", args.num_agents, "integers >= 1")
    if not all(size.isdigit() for size in sizes):
        raise ValueError(f"num_agents={args.num_agents!r} is invalid: allowed integers >= 1, comma separated")
    grid = []
    for spec in args.grid or []:
        name, equals, values = spec.partition("=")
        if not equals or not name.strip():
            raise ValueError(f"grid={spec!r} is invalid: allowed NAME=v1,v2,... with NAME one of {sweep.GRID_NAMES}")
        items = comma_list(f"grid {name.strip()}", values, "numbers")
        try:
            grid.append((name.strip(), tuple(float(item) for item in items)))
        except ValueError:
            raise ValueError(f"grid {name.strip()}={values!r} is invalid: allowed numbers, comma separated") from None
    base = make_train_config(args, algos[0])
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
    emit(rows, columns, f"sweep: {result['chunks_run']} chunks run, {result['chunks_skipped']} skipped; final "
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
    config = make_train_config(args, "dgpg")
    actor = None
    if args.checkpoint is not None:
        if not args.checkpoint.strip() or not Path(args.checkpoint, "config.json").exists():
            raise ValueError(f"checkpoint={args.checkpoint!r} is invalid: allowed a `dgpg train` directory")
        actor = checkpoint.load_actor(Path(args.checkpoint), args.task)
    with progress_bar() as progress:
        progress.add_task(f"variance at N={config.env.num_agents}", total=None, status=f"{args.rollouts} rollouts")
        result = diagnostics.measure(config, rollouts=args.rollouts, seed=args.seed, actor=actor,
                                     baseline_rollouts=args.baseline_rollouts, traces=args.traces)
    result["checkpoint"] = args.checkpoint
    if args.json:
        emit([result], [], "", True)
        return
    rows = [{"estimator": name, **{q: result[f"{q}_{name}"] for q in ("relative_variance", "variance", "mean_sq_norm")},
             **{f"{q}_se": result[f"{q}_{name}_se"] for q in ("relative_variance", "variance", "mean_sq_norm")}}
            for name in diagnostics.ESTIMATORS]
    columns = [("estimator", "advantage", ""), ("relative_variance", "relative variance", ".4g"),
               ("relative_variance_se", "SE", ".2g"), ("variance", "variance", ".4g"), ("variance_se", "SE", ".2g"),
               ("mean_sq_norm", "|mean|^2", ".4g"), ("mean_sq_norm_se", "SE", ".2g")]
    emit(rows, columns, f"per-agent policy-gradient variance, {args.task} N={result['num_agents']}, "
          f"{args.rollouts} rollouts on {args.traces} traces, "
          f"{'checkpoint ' + args.checkpoint if args.checkpoint else 'initial actor of seed ' + str(args.seed)}; "
          "relative variance = trace of one agent's covariance / squared norm of the mean", False)
