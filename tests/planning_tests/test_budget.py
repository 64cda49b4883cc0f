"""The time budget: parsing, shares on a fake clock, and the plateau rule on scripted values."""

from __future__ import annotations

import pytest

from medtune.errors import ConfigError
from medtune.hpo.stopping import plateaued
from medtune.planning import Budget, parse_budget


@pytest.mark.parametrize(
    "text, seconds",
    [
        ("90", 5400),
        ("90m", 5400),
        ("2h", 7200),
        ("1h30m", 5400),
        ("45s", 45),
        (" 2H ", 7200),
        (30, 1800),
        ("1.5h", 5400),
        ("", None),
        ("0", None),
        ("none", None),
        (None, None),
    ],
)
def test_parse_budget(text, seconds):
    assert parse_budget(text) == seconds


@pytest.mark.parametrize("text", ["2 hours", "h", "90x", "1h30", "-5m", "m90"])
def test_a_bad_budget_is_a_one_line_config_error(text):
    with pytest.raises(ConfigError, match=r"^budget: .* (is not a duration|is negative)"):
        parse_budget(text)


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_shares_and_spending_on_a_fake_clock():
    clock = FakeClock()
    budget = Budget(3600, clock).start()
    clock.now += 600
    assert budget.remaining() == 3000 and not budget.spent()
    search = budget.share(fraction=0.4)  # 40 % of what remains: 1200 s from now
    assert search.seconds == 1200
    assert budget.share(5000).seconds == 3000  # never more than what remains
    assert budget.share(fraction=0.5, keep=1000).seconds == 1000  # half of what remains after the reserve
    assert search.allows(1200) and not search.allows(1201)
    clock.now += 1200
    assert search.spent() and not budget.spent()
    assert budget.record() == {"budget_planned_s": 3600, "budget_used_s": 1800}
    clock.now += 2000
    assert budget.spent() and budget.remaining() == 0


def test_no_budget_is_unlimited():
    budget = Budget(None, FakeClock()).start()
    assert budget.remaining() is None and not budget.spent() and budget.allows(1e9)
    assert budget.share(fraction=0.5).seconds is None


def test_plateau_rule_on_scripted_values():
    rising = [0.5, 0.6, 0.7, 0.72, 0.75, 0.8]
    assert plateaued(rising, patience=3) is None
    flat = [0.5, 0.8, 0.79, None, 0.8005, 0.78]  # pruned (None) trials count as no improvement
    reason = plateaued(flat, patience=4)
    assert reason and "0.8000" in reason and "last 4 trials" in reason
    assert plateaued(flat[:4], patience=4) is None  # too few trials to judge
    assert plateaued([0.5, 0.8, 0.79, None, 0.81, 0.78], patience=4) is None  # 0.81 improved by > 1e-3
    assert plateaued([0.9, 0.5, 0.4, 0.45, 0.41], patience=3, maximize=False) is None
    assert plateaued([0.3, 0.5, 0.4, 0.45, 0.41], patience=3, maximize=False).startswith("plateau")
    assert plateaued([None] * 8, patience=3) is None  # nothing finished yet: no best to compare with
