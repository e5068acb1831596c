"""Type-prefix ranges: exact prefix semantics, checked against str.startswith."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from outbox.primitives.errors import InvalidArgumentError
from outbox.primitives.prefixes import TypeRange, successor, type_ranges


def matches(ranges: list[TypeRange] | None, value: str) -> bool:
    if ranges is None:
        return True
    return any(
        (low is None or value >= low) and (high is None or value < high) for low, high in ranges
    )


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [
        ("document.", "document/"),
        ("a_", "a`"),
        ("50%", "50&"),
        ("\U0010ffff", None),
        ("a\U0010ffff", "b"),
        ("x\ud7ff", "x\ue000"),
    ],
)
def test_successor(prefix: str, expected: str | None) -> None:
    assert successor(prefix) == expected


def test_no_filter_is_none_and_contradiction_is_empty() -> None:
    assert type_ranges() is None
    assert type_ranges("a.", "a.") == []
    assert type_ranges("a.b", "a.") == []


def test_ranges_are_merged_and_sorted() -> None:
    assert type_ranges(["room.", "document.", "document.x"]) == [
        ("document.", "document/"),
        ("room.", "room/"),
    ]
    assert type_ranges(exclude=["document.", "audit."]) == [
        (None, "audit."),
        ("audit/", "document."),
        ("document/", None),
    ]


@pytest.mark.parametrize("bad", ["", ["ok", ""], [None], "a\x00"])
def test_bad_prefixes_are_rejected(bad: object) -> None:
    with pytest.raises(InvalidArgumentError):
        type_ranges(bad)  # type: ignore[arg-type]


alphabet = st.sampled_from(["a", "b", ".", "_", "%", "\U0010ffff", "é"])
words = st.text(alphabet, min_size=1, max_size=4)


@settings(max_examples=400, deadline=None)
@given(
    include=st.one_of(st.none(), st.lists(words, min_size=1, max_size=3)),
    exclude=st.one_of(st.none(), st.lists(words, min_size=1, max_size=3)),
    values=st.lists(st.text(alphabet, max_size=6), max_size=20),
)
def test_ranges_select_exactly_the_prefixed_types(
    include: list[str] | None, exclude: list[str] | None, values: list[str]
) -> None:
    ranges = type_ranges(include, exclude)
    for value in values:
        wanted = (include is None or any(value.startswith(p) for p in include)) and not (
            exclude and any(value.startswith(p) for p in exclude)
        )
        if include is None and exclude is None:
            assert ranges is None
        assert matches(ranges, value) == wanted, (include, exclude, value, ranges)
