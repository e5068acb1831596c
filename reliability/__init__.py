"""Proof under faults and over time: ``python -m reliability.chaos`` and ``.soak``.

Both start their own throwaway servers with production durability (``fsync``,
``synchronous_commit``, ``full_page_writes`` and autovacuum on), run the real sidecar and
workers as processes, and print what they measured. See docs/reliability.md.
"""
