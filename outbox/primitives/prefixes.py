"""Type-prefix filters as ranges of the ``type`` column.

``type`` uses the ``"C"`` collation, so strings are ordered by code point, and the strings
that start with ``p`` are exactly the half-open range ``[p, successor(p))``. Include and
exclude lists therefore reduce to a short, sorted list of disjoint ranges, which PostgreSQL
answers with index range scans on ``ix_outbox_claimable_type``. There is no LIKE pattern, so
``_`` and ``%`` are ordinary characters. ``outbox.storage.claims`` turns the ranges into SQL.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from outbox.primitives.constants import MAX_TYPE_PREFIXES
from outbox.primitives.errors import InvalidArgumentError

__all__ = [
    "MAX_TYPE",
    "PrefixArg",
    "TypeRange",
    "successor",
    "type_bounds",
    "type_ranges",
]

PrefixArg = str | Sequence[str] | None
"""One prefix, several, or ``None`` for no filter."""

TypeRange = tuple[str | None, str | None]
"""Half-open ``[low, high)``; ``None`` is unbounded on that side."""

_MAX_CODE_POINT = 0x10FFFF

MAX_TYPE = chr(_MAX_CODE_POINT) * 1000
"""A string above every ``type`` a pending row can have, standing for "no upper bound" where
SQL needs a value: 4,000 bytes of the highest code point, while a pending row's type is in a
btree index, whose entries hold at most about 2,700 bytes."""
_SURROGATES = range(0xD800, 0xE000)


def successor(prefix: str) -> str | None:
    """The least string greater than every string starting with ``prefix`` (None: no bound)."""
    stripped = prefix.rstrip(chr(_MAX_CODE_POINT))
    if not stripped:
        return None
    nxt = ord(stripped[-1]) + 1
    if nxt in _SURROGATES:
        nxt = _SURROGATES.stop
    return stripped[:-1] + chr(nxt)


def _as_list(prefixes: PrefixArg, name: str) -> list[str]:
    if prefixes is None:
        return []
    items = [prefixes] if isinstance(prefixes, str) else list(prefixes)
    for item in items:
        if not isinstance(item, str) or not item:
            raise InvalidArgumentError(f"{name}: type prefixes must be non-empty strings")
        if "\x00" in item:
            raise InvalidArgumentError(f"{name}: a type prefix cannot contain NUL")
    return items


def _below(a: str | None, b: str | None) -> bool:
    """``a < b`` where ``None`` on the left is -inf and on the right is +inf."""
    return a is None or b is None or a < b


def _union(ranges: Iterable[TypeRange]) -> list[TypeRange]:
    ordered = sorted(ranges, key=lambda r: (r[0] is not None, r[0] or ""))
    merged: list[TypeRange] = []
    for low, high in ordered:
        if merged:
            last_low, last_high = merged[-1]
            # Overlapping or touching: low <= last_high.
            if last_high is None or (low is not None and low <= last_high):
                if last_high is not None and (high is None or high > last_high):
                    merged[-1] = (last_low, high)
                continue
        merged.append((low, high))
    return merged


def _subtract(ranges: list[TypeRange], cut: TypeRange) -> list[TypeRange]:
    cut_low, cut_high = cut
    out: list[TypeRange] = []
    for low, high in ranges:
        # Part below the cut: [low, min(high, cut_low)).
        if cut_low is not None and _below(low, cut_low):
            top = cut_low if high is None or cut_low < high else high
            out.append((low, top))
        # Part above the cut: [max(low, cut_high), high).
        if cut_high is not None and _below(cut_high, high):
            bottom = cut_high if low is None or cut_high > low else low
            out.append((bottom, high))
    return out


def type_ranges(include: PrefixArg = None, exclude: PrefixArg = None) -> list[TypeRange] | None:
    """The disjoint, sorted ranges of ``type`` selected by the prefixes.

    ``None`` means "every type" (no filter); an empty list means "no type at all" (for
    example including and excluding the same prefix).
    """
    included = _as_list(include, "include_type_prefix")
    excluded = _as_list(exclude, "exclude_type_prefix")
    if len(included) + len(excluded) > MAX_TYPE_PREFIXES:
        raise InvalidArgumentError(
            f"at most {MAX_TYPE_PREFIXES} type prefixes (include and exclude together),"
            f" got {len(included) + len(excluded)}: filter by fewer, shorter prefixes"
        )
    if not included and not excluded:
        return None
    ranges: list[TypeRange] = (
        _union((p, successor(p)) for p in included) if included else [(None, None)]
    )
    for prefix in excluded:
        ranges = _subtract(ranges, (prefix, successor(prefix)))
    return ranges


def type_bounds(ranges: Sequence[TypeRange]) -> tuple[list[str], list[str]]:
    """``ranges`` as two parallel lists of lower and upper bounds, every bound a string:
    ``""`` (the least string) for no lower bound, :data:`MAX_TYPE` for no upper bound."""
    return [low or "" for low, _ in ranges], [
        MAX_TYPE if high is None else high for _, high in ranges
    ]
