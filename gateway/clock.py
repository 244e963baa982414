"""Time as a dependency: pure code takes a clock instead of calling ``time``."""

from __future__ import annotations

import math
import time
from typing import Protocol


def as_finite(value: object) -> float | None:
    """``value`` as a finite float, or None: a bool is not a number here, nor an int
    too large for a float, nor NaN or infinity. For times, weights and shares that
    arrive from outside (a payload, a config) and must never poison arithmetic."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        f = float(value)
    except OverflowError:
        return None
    return f if math.isfinite(f) else None


class Clock(Protocol):
    """Wall time for timestamps and monotonic time for intervals."""

    def wall(self) -> float: ...

    def monotonic(self) -> float: ...


class SystemClock:
    """The real clock."""

    def wall(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()


class ManualClock:
    """A clock a test moves by hand."""

    def __init__(self, wall: float = 1_795_000_000.0, monotonic: float = 1_000.0) -> None:
        self._wall = wall
        self._mono = monotonic

    def wall(self) -> float:
        return self._wall

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> None:
        self._wall += seconds
        self._mono += seconds
