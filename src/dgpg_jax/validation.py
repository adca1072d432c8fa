"""Host-side checks of user settings, shared by every config: one message format,
raised before anything is traced.

    check("num_agents", 0, is_integer(0) and 0 >= 1, "an integer >= 1")
    ValueError: num_agents=0 is invalid: allowed an integer >= 1

Booleans are not numbers here: `True` is rejected where an integer or a float is asked for.
"""

import math

FLOAT32_MAX = 3.4028234663852886e38
INT32_MAX = 2**31 - 1
SEED_MAX = 2**32 - 1  # jax.random.key keeps 32 bits: a larger seed would repeat a smaller one's run

# Sizes no run could hold, refused before any array is built. The largest runs here (N =
# 1500, T = 3600, 4096 seeds) stay far inside every bound.
MAX_AGENTS = 2**20  # a million agents (700x N = 1500): every step is O(N) work and memory per seed
MAX_SERVERS = 2**20  # the same for servers M = servers_per_agent x N: O(M) queues per step and seed
MAX_HORIZON = 2**20  # steps per episode: a million steps of one scan is hours per episode at any N
MAX_SEEDS = 2**20  # seeds of one run or sweep (256x the 4096 of the largest run here)
MAX_EPISODE_ROWS = 2**31 - 1  # T x J x k candidate rows of an episode: one array, indexed by int32
# Those rows over all seeds: 2^40 rows of >= 1 float32 feature are 4 TiB, more than any
# accelerator or host holds, and 10^12 row scores per episode are hours on any of them.
MAX_RUN_ROWS = 2**40


def check(name: str, value, ok: bool, allowed: str) -> None:
    """Raise ValueError naming `name`, its `value` and the `allowed` range unless `ok`."""
    if not ok:
        raise ValueError(f"{name}={value!r} is invalid: allowed {allowed}")


def is_integer(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def is_number(x) -> bool:
    """An int or float (not a bool) that is finite in float32, the precision of every array."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and abs(x) <= FLOAT32_MAX


def check_integer(name: str, value, minimum: int = 1, maximum: int = INT32_MAX) -> None:
    """An integer in [minimum, maximum]; the default maximum is int32's, the index type."""
    check(name, value, is_integer(value) and minimum <= value <= maximum, f"an integer in [{minimum}, {maximum}]")


def check_number(name: str, value, low: float, high: float = math.inf, low_open: bool = False,
                 high_open: bool = False) -> None:
    """A finite number in the interval from `low` to `high` (closed unless told open)."""
    above = is_number(value) and (value > low if low_open else value >= low)
    below = is_number(value) and (value < high if high_open else value <= high)
    if math.isinf(high):
        allowed = f"a number {'>' if low_open else '>='} {low:g} and finite in float32"
    else:
        allowed = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    check(name, value, above and below, allowed)


def check_episode_rows(horizon: int, num_rows: int, num_candidates: int) -> None:
    """One episode's candidate rows T x J x k, which must fit one int32-indexed array
    (its feature buffer over the features)."""
    rows = horizon * num_rows * num_candidates
    check("horizon x num_rows x num_candidates", rows, rows <= MAX_EPISODE_ROWS,
          f"a product <= {MAX_EPISODE_ROWS} (one int32-indexed array; horizon={horizon}, num_rows={num_rows}, "
          f"num_candidates={num_candidates})")


def check_seeds(seeds: int, seed: int, episode_rows: int = 1) -> None:
    """`seeds` runs from master seed `seed` (the sweep's seeds seed .. seed + seeds - 1 are
    all below 2^32), their candidate rows (`episode_rows` per episode, a Task's
    `episode_rows`) at most MAX_RUN_ROWS."""
    check_integer("seeds", seeds, 1, MAX_SEEDS)
    check_integer("seed", seed, 0, SEED_MAX)
    check("seeds", seeds, seed + seeds - 1 <= SEED_MAX, f"at most {SEED_MAX + 1 - seed} from seed {seed} "
          "(seeds are below 2^32)")
    check("seeds", seeds, seeds * episode_rows <= MAX_RUN_ROWS,
          f"at most {MAX_RUN_ROWS // episode_rows} at {episode_rows} candidate rows per episode "
          f"(seeds x rows <= {MAX_RUN_ROWS})")


def check_choice(name: str, value, choices: tuple) -> None:
    check(name, value, value in choices, f"one of {choices}")
