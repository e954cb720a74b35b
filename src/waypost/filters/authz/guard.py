"""A failed-key rate limit per client address: key guessing costs the guesser, not the service.

Every request that presents an API key no Consumer has takes a token from its client address's
bucket (:data:`BURST` tokens, refilled at one per :data:`REFILL_SECONDS`). With the bucket empty,
the address gets 429 before its key is even looked up, until a token is back; requests with a
valid key or no key never take one. Memory is bounded: at most :data:`MAX_ADDRESSES` buckets,
the least recently failing address forgotten first (forgetting gives an attacker back at most
:data:`BURST` guesses). Thread-safety: event loop only, like the decision core.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Final

__all__ = ["BURST", "MAX_ADDRESSES", "REFILL_SECONDS", "FailedKeyGuard"]

BURST: Final = 20
"""Invalid keys one address may present in a row."""
REFILL_SECONDS: Final = 3.0
"""Then one more every this many seconds: 20 a minute, against thousands a second unguarded."""
MAX_ADDRESSES: Final = 65_536


class FailedKeyGuard:
    def __init__(
        self,
        *,
        burst: int = BURST,
        refill_seconds: float = REFILL_SECONDS,
        max_addresses: int = MAX_ADDRESSES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.burst = burst
        self.refill_seconds = refill_seconds
        self._max = max_addresses
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # address -> (tokens, at)

    def __len__(self) -> int:
        return len(self._buckets)

    def _tokens(self, address: str, now: float) -> float:
        entry = self._buckets.get(address)
        if entry is None:
            return float(self.burst)
        tokens, at = entry
        return min(float(self.burst), tokens + (now - at) / self.refill_seconds)

    def blocked(self, address: str) -> bool:
        """Whether ``address`` has used up its failed keys (answer 429 without checking)."""
        if address not in self._buckets:
            return False
        return self._tokens(address, self._clock()) < 1.0

    def retry_after(self, address: str) -> int:
        """Whole seconds until ``address`` may try a key again."""
        missing = 1.0 - self._tokens(address, self._clock())
        return max(1, int(missing * self.refill_seconds + 0.999))

    def failed(self, address: str) -> None:
        """``address`` presented a key no Consumer has."""
        now = self._clock()
        tokens = self._tokens(address, now) - 1.0
        self._buckets[address] = (tokens, now)
        self._buckets.move_to_end(address)
        while len(self._buckets) > self._max:
            self._buckets.popitem(last=False)
