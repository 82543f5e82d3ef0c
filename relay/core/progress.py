"""When to emit a progress event: a small clock-driven policy, separate from how fast bytes arrive.

Rules, for a `ProgressTicker` asked `due(bytes, total, now)` each time a chunk arrives:

1. The first chunk ticks, so a follower sees bytes flowing at once.
2. Never two ticks closer than `min_interval` seconds.
3. A tick once `max_interval` seconds have passed since the last one (checked when a chunk arrives, so an
   idle upload makes no ticks).
4. With a declared `total` and a `percent_step`, a tick when the count crosses into a new step of the total
   (still subject to rule 2; a skipped step is reported by the next tick).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ProgressPolicy", "ProgressTicker"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ProgressPolicy:
    """Progress cadence in seconds; `percent_step` None turns off percent-based ticks."""

    min_interval: float = 0.1
    max_interval: float = 1.0
    percent_step: float | None = 1.0

    def __post_init__(self) -> None:
        if self.min_interval < 0 or self.max_interval < self.min_interval:
            raise ValueError("need 0 <= min_interval <= max_interval")
        if self.percent_step is not None and self.percent_step <= 0:
            raise ValueError("percent_step must be positive or None")


class ProgressTicker:
    """Decides, chunk by chunk, whether a progress event is due."""

    __slots__ = ("_last", "_policy", "_step")

    def __init__(self, policy: ProgressPolicy | None = None) -> None:
        self._policy = policy or ProgressPolicy()
        self._last: float | None = None
        self._step = -1

    def _step_of(self, nbytes: int, total: int | None) -> int:
        percent = self._policy.percent_step
        if percent is None or not total or total <= 0:
            return -1
        return int(min(nbytes, total) * 100 / (total * percent))

    def due(self, nbytes: int, total: int | None, now: float) -> bool:
        """True when a progress event should be emitted now (and records the tick)."""
        last = self._last
        if last is not None:
            elapsed = now - last
            if elapsed < self._policy.min_interval:
                return False
            if elapsed < self._policy.max_interval and self._step_of(nbytes, total) <= self._step:
                return False
        self._last = now
        self._step = self._step_of(nbytes, total)
        return True
