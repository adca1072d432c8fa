"""Cost of in-turn decisions: DG-PG training with the jobs of a step deciding at once
(`decisions="simultaneous"`) against in turn (`"in_turn"`: a `lax.scan` over the step's
job slots, the actor applied job by job), side by side in one process.

For each N and seed count S, `runner.run_training` of DG-PG in the queueing setting, 2
episodes: compile seconds and seconds per episode after compiling (`timed_run` of
benchmarks/training.py), and the ratio in turn / simultaneous.

    python benchmarks/decisions.py           # N in {20, 200, 1000}, S in {1, 5}
    python benchmarks/decisions.py --quick   # N in {20, 200}, S = 1

Writes benchmarks/results/decisions.{json,md}. Run it alone.
"""

import argparse
import datetime
import json
import shlex
import sys
from pathlib import Path

import machine
from dgpg_jax import memory, train
from dgpg_jax.tasks.cloud import CloudConfig
from training import timed_run

RESULTS = Path(__file__).parent / "results"
MODES = ("simultaneous", "in_turn")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    sizes = (20, 200) if args.quick else (20, 200, 1000)
    seed_counts = (1,) if args.quick else (1, 5)
    rows = []
    for n in sizes:
        for seeds in seed_counts:
            for mode in MODES:
                config = train.TrainConfig(env=CloudConfig(num_agents=n, decisions=mode), num_episodes=2)
                row = {"num_agents": n, "seeds": seeds, "decisions": mode, **timed_run(config, seeds)}
                rows.append(row)
                print(json.dumps(row), flush=True)
    meta = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": f"{machine.describe()}, {memory.available_bytes() / 2**30:.0f} GiB free",
            "command": "python " + " ".join(shlex.quote(a) for a in sys.argv)}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "decisions.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    lines = [f"# Cost of in-turn decisions ({meta['date']})", "", f"Machine: {meta['machine']}. "
             f"Command: `{meta['command']}`.", "",
             "| N | seeds | compile s (at once / in turn) | s / episode (at once / in turn) | ratio |",
             "|---|---|---|---|---|"]
    for at_once, in_turn in zip(rows[0::2], rows[1::2]):
        lines.append(f"| {at_once['num_agents']} | {at_once['seeds']} | {at_once['compile_seconds']:.1f} / "
                     f"{in_turn['compile_seconds']:.1f} | {at_once['seconds_per_episode']:.2f} / "
                     f"{in_turn['seconds_per_episode']:.2f} | "
                     f"{in_turn['seconds_per_episode'] / at_once['seconds_per_episode']:.2f} |")
    (RESULTS / "decisions.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
