"""The `dgpg` command line's arguments: the flags of every command (a task's environment
flags from its config class's fields), and the configs they make."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect

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


def make_env_config(args):
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


def check_run_flags(args) -> None:
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


def make_train_config(args, algo: str):
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
    return TrainConfig(algo=algo, env=make_env_config(args), num_episodes=args.episodes, **fields).validate()


def comma_list(name: str, spec: str, allowed: str) -> list[str]:
    """The items of a comma list, refused when empty or repeated."""
    items = [item.strip() for item in spec.split(",")]
    if not spec.strip() or any(not item for item in items):
        raise ValueError(f"{name}={spec!r} is invalid: allowed {allowed}, comma separated, none empty")
    repeated = sorted({item for item in items if items.count(item) > 1})
    if repeated:
        raise ValueError(f"{name}={spec!r} is invalid: {repeated[0]!r} appears twice; allowed each at most once")
    return items



def build_parser(task: str = registry.DEFAULT_TASK) -> argparse.ArgumentParser:
    """The parser whose environment flags are those of `task`'s config."""
    from dgpg_jax.cli.commands import cmd_compare, cmd_eval, cmd_sweep, cmd_train, cmd_variance

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


def task_of(argv: list[str] | None) -> str:
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


def other_task_flag(task: str, unknown: list[str]) -> str | None:
    """A one-line refusal of an unknown flag that is another task's environment flag."""
    for flag in (item.split("=", 1)[0] for item in unknown if item.startswith("--")):
        owners = [name for name in registry.TASKS if name != task and flag in _env_flags(name)]
        if owners:
            return (f"{flag} is a flag of the {owners[0]} task, not of {task}: allowed with --task {owners[0]}, "
                    f"or the flags that `--task {task} --help` lists")
    return None
