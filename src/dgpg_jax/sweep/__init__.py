"""Sweeps: many seeds x a grid of traced hyperparameters x algorithms x N, in memory-sized
chunks over every device (of every process), streamed to a directory and resumable.

    sweep = Sweep(TrainConfig(num_episodes=20), algos=("dgpg", "mappo"), num_agents=(20, 200),
                  grid={"alpha": (0.2, 0.6)}, seeds=64)
    result = run_sweep(sweep, Path("runs/sweep"))

Any task of `dgpg_jax.registry` can be swept; the summary pools each configuration's
final episodes with the task's own `pool`. The modules: `spec` (what a sweep runs),
`programs` (the compiled programs, the mesh and the chunk size), `store` (the directory
and its chunk files), `loop` (`run_sweep`), `summary` (bootstrap CIs and the plot).
"""

from dgpg_jax.sweep.loop import run_sweep
from dgpg_jax.sweep.programs import (MEMORY_FRACTION, PROBE_ITEMS_PER_DEVICE, available_bytes, choose_chunk_size,
                                     chunk_program, make_mesh, reference_program)
from dgpg_jax.sweep.spec import ADDED_FIELDS, FORMAT_VERSION, GRID_NAMES, Sweep, configuration, run_name
from dgpg_jax.sweep.store import (STALE, arguments_hash, chunk_hash, chunk_path, read_chunk, read_chunks,
                                  write_chunk)
from dgpg_jax.sweep.summary import plot_final_ratio, summarise

__all__ = ["ADDED_FIELDS", "FORMAT_VERSION", "GRID_NAMES", "MEMORY_FRACTION", "PROBE_ITEMS_PER_DEVICE", "STALE",
           "Sweep", "arguments_hash", "available_bytes", "choose_chunk_size", "chunk_hash", "chunk_path",
           "chunk_program", "configuration", "make_mesh", "plot_final_ratio", "read_chunk", "read_chunks",
           "reference_program", "run_name", "run_sweep", "summarise", "write_chunk"]
