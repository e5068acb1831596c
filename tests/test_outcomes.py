"""Pure rules of the runtime: how outcomes become acks, retry delays, growing waits."""

from __future__ import annotations

import math
import uuid
from datetime import UTC, datetime

import pytest

from outbox import DELIVERED, BackoffPolicy, ClaimedMessage, GiveUp, Retry
from outbox.primitives.constants import MAX_DELAY_SECONDS
from outbox.primitives.delays import GrowingDelay
from outbox.runtime.outcomes import acks_for_outcomes, retry_delay


def message(id_: int = 1, attempts: int = 1) -> ClaimedMessage:
    now = datetime.now(UTC)
    return ClaimedMessage(
        id=id_,
        type="message.created",
        key=None,
        payload={},
        attempts=attempts,
        created_at=now,
        next_attempt_at=now,
        locked_by="w1",
        locked_until=now,
        error=None,
        lease_token=uuid.uuid4(),
    )


def fixed(seconds: float) -> BackoffPolicy:
    return lambda attempt, message_type: seconds


@pytest.mark.parametrize(
    ("retry", "expected"),
    [
        (Retry("x"), 10.0),  # the policy's delay
        (Retry("x", delay=3), 3.0),  # the handler's delay replaces it
        (Retry("x", delay=0), 0.0),
        (Retry("x", min_delay=25), 25.0),  # a floor above the policy
        (Retry("x", min_delay=2), 10.0),  # a floor below it changes nothing
        (Retry("x", delay=3, min_delay=7), 7.0),
        (Retry("x", delay=-1), 10.0),  # unusable delays fall back to the policy
        (Retry("x", delay=math.nan), 10.0),
        (Retry("x", delay="soon"), 10.0),  # type: ignore[arg-type]
        (Retry("x", min_delay=math.nan), 10.0),
        (Retry("x", delay=math.inf), MAX_DELAY_SECONDS),  # clamped, never unstorable
        (Retry("x", min_delay=1e12), MAX_DELAY_SECONDS),
    ],
)
def test_retry_delay_is_resolved_and_clamped_in_one_place(retry: Retry, expected: float) -> None:
    assert retry_delay(retry, message(), fixed(10)) == expected


def test_outcomes_map_to_acks_by_kind() -> None:
    a, b, c, d = (message(i) for i in range(1, 5))
    acks = acks_for_outcomes(
        [a, b, c, d],
        [DELIVERED, GiveUp("bad"), Retry("later", delay=5), "nonsense"],  # type: ignore[list-item]
        backoff=fixed(10),
        max_attempts=3,
        outage_hold=lambda _: pytest.fail("no outage here"),
    )
    assert acks.published == [a]
    assert acks.dead == [(b, "bad")]
    assert acks.retried == [
        (c, Retry("later", 5.0)),
        (d, Retry("not an outcome: 'nonsense'", 10.0)),
    ]
    assert acks.released == []


def test_an_outage_is_a_counted_retry_until_the_last_attempt_then_handed_back() -> None:
    early, last = message(1, attempts=2), message(2, attempts=3)
    held: list[str] = []
    acks = acks_for_outcomes(
        [early, last],
        [Retry("down", outage=True), Retry("down", outage=True)],
        backoff=fixed(10),
        max_attempts=3,
        outage_hold=lambda error: held.append(error) or 4.0,  # type: ignore[func-returns-value]
    )
    assert acks.retried == [(early, Retry("down", 10.0))]
    assert acks.released == [(last, 4.0)]
    assert held == ["down"]


def test_a_wrong_number_of_outcomes_retries_the_whole_batch() -> None:
    a, b = message(1), message(2)
    acks = acks_for_outcomes(
        [a, b], [DELIVERED], backoff=fixed(10), max_attempts=3, outage_hold=lambda _: 0.0
    )
    error = "handler returned 1 outcomes for 2 messages"
    assert acks.published == []
    assert acks.retried == [(a, Retry(error, 10.0)), (b, Retry(error, 10.0))]


def test_growing_delays_double_to_the_cap_and_start_over_on_reset() -> None:
    delays = GrowingDelay(0.1, 0.5)
    assert [delays.next() for _ in range(5)] == [0.1, 0.2, 0.4, 0.5, 0.5]
    delays.reset()
    assert delays.next() == 0.1


def test_jittered_delays_stay_within_half_to_full() -> None:
    delays = GrowingDelay(1.0, 4.0, jitter=True)
    for ceiling in (1.0, 2.0, 4.0, 4.0):
        assert ceiling / 2 <= delays.next() <= ceiling


def test_growing_delays_refuse_non_positive_values() -> None:
    with pytest.raises(ValueError, match="positive"):
        GrowingDelay(0, 1)
