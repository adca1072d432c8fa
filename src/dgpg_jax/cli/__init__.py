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

import os
import sys

from dgpg_jax.cli.output import RunFailed
from dgpg_jax.cli.parser import build_parser, other_task_flag, task_of


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


def main(argv: list[str] | None = None) -> int:
    import logging

    logging.getLogger("absl").setLevel(logging.CRITICAL)  # orbax's threads log each fault the CLI reports once
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # --task module:Config finds a module of the current directory
    task = task_of(argv)
    parser = build_parser(task)
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        message = other_task_flag(task, unknown)
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
