"""How much memory a compiled program needs, how much the device has, and a refusal
that says both, before the program runs.

XLA's own memory analysis of a compiled program (`compiled.memory_analysis()`) gives its
argument, output and temporary buffers. A request that does not fit is refused with a
ValueError (the CLI turns it into one line and exit status 2), or split: `seeds_that_fit`
gives the largest batch of seeds a program of a known per-seed size can take.
"""

import os

import jax

FRACTION = 0.8  # of the available memory a program may plan to use; the rest is headroom


def available_bytes(device: jax.Device | None = None) -> int:
    """Free memory of one device (default: the first local one): the accelerator's limit minus what
    is in use, or on CPU the host's available memory (MemAvailable of /proc/meminfo)
    shared by the host's devices."""
    device = device or jax.local_devices()[0]
    stats = device.memory_stats()
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
    host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    host = int(line.split()[1]) * 1024
    except OSError:
        pass
    return host // jax.local_device_count()


def program_bytes(compiled) -> int:
    """Bytes a compiled program holds at once: its peak where XLA reports one, else its
    arguments, outputs and temporaries (aliased buffers counted once)."""
    stats = compiled.memory_analysis()
    if stats is None:
        return 0
    peak = getattr(stats, "peak_memory_in_bytes", 0) or 0
    total = stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes
    return int(max(peak, total - stats.alias_size_in_bytes))


def gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def check_fits(compiled, what: str, hint: str) -> int:
    """Raise ValueError if `compiled` needs more than FRACTION of the free memory; returns
    its size in bytes. `what` names the request, `hint` what to lower."""
    need, free = program_bytes(compiled), available_bytes()
    if need > FRACTION * free:
        raise ValueError(f"{what} needs about {gib(need)} of memory and {gib(free)} is available "
                         f"(at most {FRACTION:.0%} of it is used): allowed a smaller request ({hint})")
    return need


def seeds_that_fit(bytes_per_seed: float, fixed_bytes: float = 0.0) -> int:
    """The most seeds whose programs fit FRACTION of the free memory (0 if none does)."""
    room = FRACTION * available_bytes() - fixed_bytes
    return max(0, int(room // max(bytes_per_seed, 1.0)))
