"""Defaults shared by the library, the workers and their settings."""

from __future__ import annotations

DEFAULT_MAX_ATTEMPTS = 10
"""Claims a message may take before it is given up (``dead``)."""

DEFAULT_REAP_LIMIT = 1000
"""Expired leases reaped per statement, to keep each reap short."""

FILTERED_CLAIM_POOL_FACTOR = 2
"""A type-filtered claim picks from the oldest ``limit * factor`` rows, so that claimers
racing for the same oldest rows each still fill their batch."""

FILTERED_CLAIM_WALK_FACTOR = 3
"""A type-filtered claim first reads the oldest ``limit * factor`` claimable rows of any type;
only when fewer than ``limit`` of them have a wanted type does it read the wanted types one
by one."""

MAX_TYPE_PREFIXES = 100
"""Most type prefixes one filter may have (include and exclude together): each costs the
filtered claim a comparison per walked row (300 prefixes: about 4x the claim of one)."""

MAX_CLAIM_LIMIT = 10_000
"""Largest batch one claim may take."""

MAX_DELAY_SECONDS = 10 * 365 * 24 * 3600.0
"""Longest delay a message or a retry may be given (ten years)."""

MAX_ERROR_LENGTH = 2000
"""Longer error texts are cut to this many characters before they are stored."""

# The worker runtime's fixed timings (its tunable ones are settings).

CLAIM_GRACE_SECONDS = 2.0
"""How long a claim under way may still finish after a worker is asked to stop."""

FINAL_WRITE_SECONDS = 5.0
"""How long a stopping worker's last hand-backs may wait for the database."""

BACKSTOP_MARGIN_SECONDS = 5.0
"""Extra time over ``HANDLER_TIMEOUT_SECONDS`` for handlers that time out on their own."""

GAUGE_REFRESH_SECONDS = 10.0
"""How often a worker with metrics on refreshes the table gauges."""

# Bounds on what enqueue accepts: what PostgreSQL can index and a worker can decode.

MAX_KEY_BYTES = 2000
"""Longest ``key`` or ``dedupe_key``, in UTF-8 bytes. A btree entry must stay under 2,704
bytes (a third of a page; measured: a 2,700-byte incompressible text fails); 2,000 leaves
room for the other columns of a composite index such as ``(key, position, id)``."""

MAX_PAYLOAD_DEPTH = 512
"""Deepest nesting of objects and arrays in a payload. ``json.loads`` in a worker fails
near 1,000 levels minus the worker's own stack (Python's default recursion limit), and
PostgreSQL's ``jsonb`` parser near a few thousand; 512 is far beyond real payloads."""

MAX_INT_DIGITS = 4300
"""Most digits an integer in a payload may have: Python's default limit on converting
text to ``int`` (``sys.int_info.default_max_str_digits``), which every worker decoding
the payload applies whatever the producer's own setting."""
