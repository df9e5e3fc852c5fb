"""Publisher rate limits: one token bucket per identity (docs/security.md#rate-limits).

An identity is a token's `sub`, or the client's address when the bus is open. Its bucket holds
up to `burst` events and refills at `rate` events per second (the token's `rate_limit`, else
`--rate-limit`); every connection and REST call of the identity draws from the same bucket.
Sync and owned by the ingress (one trio thread: no call interleaves with another). Bounded:
past `max_identities` the bucket used longest ago is forgotten (it would be full by then anyway,
or nearly).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Final

import attrs

MAX_IDENTITIES: Final = 100_000


@attrs.frozen
class Decision:
    """`taken`: the events may go (after `wait` seconds, when the bucket owed them); otherwise
    they would have to wait `wait` seconds, more than the caller allowed, and nothing was
    taken."""

    taken: bool
    wait: float


@attrs.define
class RateLimiter:
    rate: float | None  # events per second for an identity whose token says nothing
    burst: float | None  # bucket size; None: one second's worth
    max_identities: int = MAX_IDENTITIES
    _buckets: OrderedDict[str, tuple[float, float]] = attrs.field(factory=OrderedDict)
    refused: int = 0  # publishes refused for their rate
    delayed: int = 0  # publishes that waited for their rate

    def take(
        self, identity: str, events: int, rate: float | None, now: float, *, max_wait: float
    ) -> Decision:
        """Take `events` from `identity`'s bucket at time `now` (seconds, any clock). `rate`
        overrides the default (a token's claim). With no rate at all, everything goes."""
        rate = rate if rate is not None else self.rate
        if rate is None:
            return Decision(True, 0.0)
        burst = max(self.burst if self.burst is not None else rate, 1.0)
        tokens, at = self._buckets.pop(identity, (burst, now))
        tokens = min(burst, tokens + (now - at) * rate)
        # a batch larger than the bucket goes when the bucket is full, leaving a debt: else it
        # could never go, and the average rate holds either way
        wait = max(0.0, (min(events, burst) - tokens) / rate)
        if wait > max_wait:
            self.refused += 1
            self._keep(identity, tokens, now)
            return Decision(False, wait)
        if wait > 0:
            self.delayed += 1
        self._keep(identity, tokens - events, now)  # below zero: it owes what it waits for
        return Decision(True, wait)

    def _keep(self, identity: str, tokens: float, now: float) -> None:
        self._buckets[identity] = (tokens, now)
        while len(self._buckets) > self.max_identities:
            self._buckets.popitem(last=False)
