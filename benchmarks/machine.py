"""The machine a benchmark ran on, named the same way in every results file."""

import os
import platform

import jax


def describe() -> str:
    """CPU model, cores, JAX devices and version: "AMD EPYC, 2 cores, 1 cpu device(s), jax 0.10.2"."""
    name = platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), name)
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} cores, {jax.device_count()} {jax.devices()[0].platform} device(s), " \
           f"jax {jax.__version__}"
