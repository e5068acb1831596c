"""Backoff policies: pure functions, stepped without a clock."""

from __future__ import annotations

import random

import pytest

from outbox import ExponentialBackoff, FixedSchedule, InvalidArgumentError, PerTypeBackoff


@pytest.mark.parametrize(
    ("attempt", "ceiling"), [(1, 1.0), (2, 2.0), (3, 4.0), (9, 256.0), (10, 300.0), (10**6, 300.0)]
)
def test_exponential_ceiling_doubles_up_to_the_cap(attempt: int, ceiling: float) -> None:
    assert ExponentialBackoff().ceiling(attempt) == ceiling


def test_full_jitter_spreads_between_floor_and_ceiling() -> None:
    policy = ExponentialBackoff(base=2, cap=60, floor=0.5, rng=random.Random(7))
    delays = [policy(4, "a.b") for _ in range(2000)]
    assert min(delays) >= 0.5 and max(delays) <= 16.0
    assert 6.0 < sum(delays) / len(delays) < 10.0  # uniform(0, 16) averages 8
    assert len({round(d, 3) for d in delays}) > 1000


def test_fixed_schedule_repeats_its_last_delay() -> None:
    policy = FixedSchedule([60, 300, 900])
    assert [policy(n, "x") for n in (1, 2, 3, 4, 10)] == [60, 300, 900, 900, 900]


def test_per_type_picks_the_longest_matching_prefix() -> None:
    policy = PerTypeBackoff(
        {"document.": FixedSchedule([60]), "document.urgent.": FixedSchedule([1])},
        default=FixedSchedule([5]),
    )
    assert policy(1, "document.preprocess.v1") == 60
    assert policy(1, "document.urgent.v1") == 1
    assert policy(1, "message.created") == 5


@pytest.mark.parametrize(
    "make",
    [
        lambda: ExponentialBackoff(base=0),
        lambda: ExponentialBackoff(factor=0.5),
        lambda: ExponentialBackoff(cap=1, floor=2),
        lambda: FixedSchedule([]),
        lambda: FixedSchedule([10, -1]),
    ],
)
def test_bad_policies_are_rejected(make: object) -> None:
    with pytest.raises(InvalidArgumentError):
        make()  # type: ignore[operator]
