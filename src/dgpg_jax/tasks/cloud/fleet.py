"""The server fleet: an AWS-like catalog in a fixed mix, the same at every size (or a homogeneous one)."""

import jax.numpy as jnp

# AWS-like server catalog: (name, vCPUs, relative speed, servers of this type per 16).
SERVER_CATALOG: tuple[tuple[str, int, float, int], ...] = (
    ("m5.large", 2, 1.0, 5),
    ("m5.xlarge", 4, 1.0, 4),
    ("c5.2xlarge", 8, 1.3, 2),
    ("r5.2xlarge", 8, 1.0, 2),
    ("m5.4xlarge", 16, 1.0, 2),
    ("c5.9xlarge", 36, 1.3, 1),
)

FLEETS = ("catalog", "homogeneous")
"""Fleet kinds: the catalog mix (heterogeneous), or M identical servers."""


def fleet_capacity(num_servers: int, fleet: str = "catalog") -> jnp.ndarray:
    """Relative capacity (vCPU x speed, mean 1) of a fleet: drawn from the catalog mix, or
    all ones for a homogeneous fleet (the same total capacity, so the same load).

    Server j takes the catalog type whose cumulative share holds (j + 1/2)/M, so the mix
    is exact when M is a multiple of 16 and as close as M allows otherwise (below 16
    servers some types are necessarily missing).
    """
    if fleet == "homogeneous":
        return jnp.ones((num_servers,), jnp.float32)
    counts = jnp.array([c[3] for c in SERVER_CATALOG], jnp.float32)
    power = jnp.array([c[1] * c[2] for c in SERVER_CATALOG], jnp.float32)
    edges = jnp.cumsum(counts) / counts.sum()
    position = (jnp.arange(num_servers, dtype=jnp.float32) + 0.5) / num_servers
    kind = jnp.searchsorted(edges, position, side="right")
    capacity = power[kind]
    return capacity / capacity.mean()
