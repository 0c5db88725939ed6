"""The one retry schedule: each failed attempt doubles the wait, up to a cap: places, the API
and mail wait alike."""

from __future__ import annotations


def delay(attempt: int, cap: float, first: float = 1.0) -> float:
    """Seconds to wait after ``attempt`` failed attempts: ``first * 2**attempt``, capped at ``cap``.

    With ``first`` 1 that is 2 s after the first failure, 4 s after the second. No jitter: the
    schedule is exact, and operators read it back from the audit trail."""
    if attempt >= 64:                   # 2**64 s is past any cap; spare the float the overflow
        return float(cap)
    return float(min(cap, first * 2 ** attempt))
