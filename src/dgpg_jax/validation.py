"""Host-side checks of user settings, shared by every config: one message format,
raised before anything is traced.

    check("num_agents", 0, is_integer(0) and 0 >= 1, "an integer >= 1")
    ValueError: num_agents=0 is invalid: allowed an integer >= 1

Booleans are not numbers here: `True` is rejected where an integer or a float is asked for.
"""

import math

FLOAT32_MAX = 3.4028234663852886e38
INT32_MAX = 2**31 - 1


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


def check_choice(name: str, value, choices: tuple) -> None:
    check(name, value, value in choices, f"one of {choices}")
