"""Progress lines a person can follow on a long job: one log line per step (iteration, repair round), with what is
done and an estimate of what is left, instead of Spark's console bar (the sessions turn it off unless the operator's
profile asks for it)."""
from __future__ import annotations

import logging
import time
from typing import Optional


class Progress:
    """`step(done, detail)` logs "<what> <done>/<total>: <detail> (<elapsed> s, ~<left> s left)". The estimate is
    the mean time per step so far times the steps left; `total` is an upper bound where a loop may stop early (the
    line then says "at most"), and `after` adds the steps of later stages of the same job (levels still to train)."""

    def __init__(self, log: logging.Logger, what: str, total: int, early_stop: bool = False, after: int = 0,
                 clock=time.monotonic):
        self.log, self.what, self.total, self.early_stop, self.after = log, what, int(total), early_stop, int(after)
        self.clock = clock
        self.start = clock()

    def left_seconds(self, done: int, steps_left: Optional[float] = None) -> Optional[float]:
        """Seconds left: the mean step so far times the steps left (`steps_left` when the caller has a better
        estimate than `total - done`), plus the later stages' steps."""
        if done <= 0:
            return None
        per_step = (self.clock() - self.start) / done
        left = max(0, self.total - done) if steps_left is None else min(max(0.0, steps_left), self.total - done)
        return per_step * (left + self.after)

    def line(self, done: int, detail: str = "", steps_left: Optional[float] = None) -> str:
        elapsed = self.clock() - self.start
        left = self.left_seconds(done, steps_left)
        bound = "at most " if self.early_stop and steps_left is None else ""
        eta = "" if left is None else f", {bound}~{left:.0f} s left"
        return f"{self.what} {done}/{self.total}{': ' + detail if detail else ''} ({elapsed:.0f} s{eta})"

    def step(self, done: int, detail: str = "", steps_left: Optional[float] = None) -> None:
        self.log.info("%s", self.line(done, detail, steps_left))


def geometric_steps_left(before: int, now: int) -> Optional[float]:
    """Steps until `now` reaches zero if it keeps shrinking by the factor of the last step (before -> now); None when
    it did not shrink."""
    import math

    if now <= 0:
        return 0.0
    if before <= now:
        return None
    return math.ceil(math.log(now + 1) / math.log(before / now))
