"""Poll spacing: exponential backoff with jitter, per watch.

Pure module. The watcher persists only the attempt count; the delay is derived from it, so a
restarted watcher continues the same schedule.
"""

from __future__ import annotations

import dataclasses
import random

from lrobridge.errors import InvalidArgument

DEFAULT_INITIAL_DELAY = 1.0
DEFAULT_MULTIPLIER = 1.5
DEFAULT_MAX_DELAY = 60.0
JITTER = 0.2  # each delay is drawn from [d * 0.8, d * 1.2], capped at the maximum
# Longest delay a backoff may ask for: Cloud Tasks' own limit (a task at most 30 days ahead);
# the Pub/Sub watch mode caps it lower (its retry policy: 600 s).
MAX_DELAY_SECONDS = 30 * 86400.0


@dataclasses.dataclass(frozen=True)
class Backoff:
    """How long to wait before the next poll of a pending operation: exponential, capped."""

    initial_delay: float = DEFAULT_INITIAL_DELAY
    multiplier: float = DEFAULT_MULTIPLIER
    max_delay: float = DEFAULT_MAX_DELAY

    def __post_init__(self) -> None:
        if not 0.01 <= self.initial_delay <= MAX_DELAY_SECONDS:
            raise InvalidArgument(
                f"backoff initial delay {self.initial_delay}s is outside 0.01s..30d"
            )
        if not 1.0 <= self.multiplier <= 10.0:
            raise InvalidArgument(f"backoff multiplier {self.multiplier} is outside 1..10")
        if not self.initial_delay <= self.max_delay <= MAX_DELAY_SECONDS:
            raise InvalidArgument(
                f"backoff max delay {self.max_delay}s must be between the initial delay "
                f"({self.initial_delay}s) and 30d"
            )

    def base_delay(self, attempt: int) -> float:
        """Delay before poll number ``attempt + 1`` without jitter."""
        # Past ~60 attempts the power overflows float precision long after it hit the cap.
        exponent = min(attempt, 200)
        return float(min(self.max_delay, self.initial_delay * self.multiplier**exponent))

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Jittered delay: spreads polls of watches created together over time."""
        base = self.base_delay(attempt)
        draw = (rng or random).uniform(1.0 - JITTER, 1.0 + JITTER)
        return min(self.max_delay, base * draw)
