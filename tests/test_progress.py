"""Progress lines: what is done and an estimate of what is left, from the mean step time so far."""
import logging

from sid_spark.progress import Progress, geometric_steps_left


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_estimate_is_the_mean_step_times_the_steps_left_and_later_stages(caplog):
    clock = Clock()
    p = Progress(logging.getLogger("t"), "train level 1/3: iteration", 30, early_stop=True, after=60, clock=clock)
    assert p.left_seconds(0) is None
    assert p.line(0) == "train level 1/3: iteration 0/30 (0 s)"
    clock.t += 12.0  # 4 iterations in 12 s: 3 s each; 26 left here and 60 in the later levels
    assert p.left_seconds(4) == 3.0 * (26 + 60)
    with caplog.at_level(logging.INFO, logger="t"):
        p.step(4, "mse=0.5")
    assert caplog.messages == ["train level 1/3: iteration 4/30: mse=0.5 (12 s, at most ~258 s left)"]


def test_a_better_estimate_of_the_steps_left_replaces_the_bound():
    clock = Clock()
    p = Progress(logging.getLogger("t"), "repair round", 64, early_stop=True, clock=clock)
    clock.t += 10.0
    assert p.line(2, "100 left", steps_left=3) == "repair round 2/64: 100 left (10 s, ~15 s left)"
    assert p.left_seconds(2, steps_left=1000) == 5.0 * 62  # never beyond the bound


def test_geometric_steps_left():
    assert geometric_steps_left(1000, 100) == 3  # 100 -> 10 -> 1 -> 0.1: ceil(log 101 / log 10)
    assert geometric_steps_left(100, 100) is None  # did not shrink: no estimate, the bound stays
    assert geometric_steps_left(10, 0) == 0.0
