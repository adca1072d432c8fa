"""Several processes (hosts) as one sweep, on JAX's own multi-process runtime.

`initialize` starts `jax.distributed`; after it `jax.devices()` lists every process's
devices, so the sweep's 1-D mesh spans them all and each chunk is one program over all
hosts. Every process runs the same Python (SPMD): the same chunks in the same order,
each computing and writing the items on its own devices. The few host-side decisions
that must agree (the chunk size, which chunks are left) go through the small
collectives below, which are identities in a single process.
"""

from __future__ import annotations

import jax
import numpy as np

from dgpg_jax.validation import check, check_integer


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> None:
    """Join (or, as process 0, start) a multi-process run. Arguments left None are taken
    from the usual environment: JAX_COORDINATOR_ADDRESS, or a SLURM or Open MPI job
    (`jax.distributed.initialize`'s cluster detection). Call it before anything else
    touches JAX. On CPU the cross-process collectives run on gloo."""
    if coordinator_address is not None:
        host, _, port = coordinator_address.rpartition(":")
        check("coordinator_address", coordinator_address, bool(host) and port.isdigit() and 0 < int(port) < 65536,
              "HOST:PORT with a port in [1, 65535]")
    if num_processes is not None:
        check_integer("num_processes", num_processes)
    if process_id is not None:
        check_integer("process_id", process_id, minimum=0)
        if num_processes is not None:
            check_integer("process_id", process_id, minimum=0, maximum=num_processes - 1)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(coordinator_address, num_processes, process_id)
    except (RuntimeError, ValueError) as error:  # no cluster detected, coordinator unreachable, ...
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"distributed start failed ({first}): allowed --coordinator-address HOST:PORT, "
                         "--num-processes P and --process-id I, or a SLURM / Open MPI job") from None


def is_main() -> bool:
    """True in the process that writes the shared files (process 0)."""
    return jax.process_index() == 0


def gather(value) -> np.ndarray:
    """[P, ...] the value of every process (numpy), in process order."""
    value = np.asarray(value)
    if jax.process_count() == 1:
        return value[None]
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(value))


def from_main(value) -> np.ndarray:
    """Process 0's value, on every process."""
    value = np.asarray(value)
    if jax.process_count() == 1:
        return value
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.broadcast_one_to_all(value))


def barrier(name: str) -> None:
    """Wait until every process gets here."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def to_host(tree):
    """The whole of every array of `tree` (sharded over all processes) as numpy, on every process."""
    if jax.process_count() == 1:
        return jax.tree.map(np.asarray, tree)
    from jax.experimental import multihost_utils

    return jax.tree.map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))


def agree(error: Exception | None) -> None:
    """Raise on every process when any process has a host-side `error` (so none is left
    waiting in the next collective): its own, or one naming the process that failed."""
    failed = gather(error is not None)
    if error is not None:
        raise error
    if failed.any():
        raise ValueError(f"process {int(np.argmax(failed))} refused the sweep (its message is in its output): "
                         "allowed settings every process can run")


def check_shared(directory) -> None:
    """Raise ValueError on every process unless `directory` is the same folder for all of
    them (process 0 writes a token there that every process must read back)."""
    if jax.process_count() == 1:
        return
    from pathlib import Path

    token = from_main(np.random.default_rng().integers(0, 2**31 - 1)) if is_main() else from_main(0)
    path = Path(directory) / ".process-0-token"
    if is_main():
        path.write_text(str(int(token)))
    barrier("dgpg-shared-directory")
    seen = path.read_text().strip() if path.exists() else ""
    agree(None if seen == str(int(token)) else ValueError(
        f"out={str(directory)!r} is invalid on process {jax.process_index()}: process 0's files are not there; "
        "allowed a directory on a filesystem every process sees"))
