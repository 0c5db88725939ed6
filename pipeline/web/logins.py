"""Failed logins to the dashboard's actions, counted per client address, so that guessing the
password goes at a few tries an hour instead of hundreds a second.

An address may fail FREE_FAILURES times in a row; after that it waits before its next try,
FIRST_WAIT seconds, doubling with each further failure up to LONGEST_WAIT. A success, or an hour
without a failure, starts it afresh. The counts live in the dashboard's memory (a restart forgets
them; the dashboard is one process), at most MAX_ADDRESSES of them, the oldest dropped first, so
requests from ever new addresses cannot fill it. Behind a reverse proxy every request comes from
the proxy's address: guessing there slows the operators' own logins too, which is the price.
"""

from __future__ import annotations

import math
import threading
from typing import Callable

FREE_FAILURES = 5
FIRST_WAIT = 1.0            # seconds after the first failure past the free ones; doubles each time
LONGEST_WAIT = 900.0
FORGET_AFTER = 3600.0       # seconds without a failure after which an address starts afresh
MAX_ADDRESSES = 10_000


class Throttle:
    """Failures in a row per address, and how long each must wait. Safe across server threads."""

    def __init__(self, clock: Callable[[], float]):
        self.clock = clock
        self._failures: dict[str, tuple[int, float]] = {}     # address -> (failures in a row, the last one's time)
        self._lock = threading.Lock()

    def wait(self, address: str) -> int:
        """Whole seconds ``address`` must still wait before it may try (0: it may try now)."""
        with self._lock:
            count, last = self._current(address)
        if count < FREE_FAILURES:
            return 0
        until = last + min(FIRST_WAIT * 2 ** (count - FREE_FAILURES), LONGEST_WAIT)
        return max(0, math.ceil(until - self.clock()))

    def failed(self, address: str) -> int:
        """Count a failure; returns the failures in a row of ``address``."""
        with self._lock:
            count = self._current(address)[0] + 1
            self._failures.pop(address, None)           # to the end: the dict keeps the newest last
            self._failures[address] = (count, self.clock())
            while len(self._failures) > MAX_ADDRESSES:
                del self._failures[next(iter(self._failures))]
        return count

    def succeeded(self, address: str) -> None:
        with self._lock:
            self._failures.pop(address, None)

    def _current(self, address: str) -> tuple[int, float]:
        count, last = self._failures.get(address, (0, 0.0))
        if count and self.clock() - last > FORGET_AFTER:
            return 0, 0.0
        return count, last
