"""Per-client limits: uploads in flight and megapixels per minute, so that one client cannot take
every slot of the queue and all the model's time from the others.

Pure bookkeeping, no HTTP: a client is whatever string the caller names it by (the API uses the
API key's digest, or the peer address). Time comes from an injectable clock so tests can move it
without sleeping. Memory follows the clients active recently: idle entries are dropped.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from enhancer.errors import TooManyRequestsError

Clock = Callable[[], float]

#: A client refused within this many seconds counts as "recently limited" (the metrics gauge).
RECENT_WINDOW_S = 60.0
#: Retry-After for a client at its in-flight limit before any upload has finished to measure by.
DEFAULT_UPLOAD_S = 1.0
#: Weight of the newest upload in the moving mean of upload durations.
_MEAN_WEIGHT = 0.2
#: Relative shortfall treated as none: what repeated float additions leave over.
_ROUNDING = 1e-9
#: Entries kept before the first sweep of idle ones (a sweep costs one pass over all entries).
_FIRST_SWEEP = 1024


def _nothing() -> None:
    pass


class TokenBucket:
    """Megapixels per minute, one bucket per client.

    A bucket holds one minute's worth and refills continuously, so a client may send a burst and
    then its rate. An image is admitted when the bucket holds its cost, or is full for an image
    larger than the bucket (else such an image could never pass); the whole cost is then taken,
    which may leave a debt that the refill repays before the next image.
    """

    def __init__(self, per_minute: float, clock: Clock = time.monotonic):
        if per_minute <= 0:
            raise ValueError("per_minute must be positive")
        self.capacity = float(per_minute)
        self.rate_per_s = self.capacity / 60.0
        self.clock = clock
        self._levels: dict[str, tuple[float, float]] = {}  # client -> (level, when)
        self._sweep_at = _FIRST_SWEEP

    def _level_at(self, client: str, now: float) -> float:
        entry = self._levels.get(client)
        if entry is None:
            return self.capacity
        level, at = entry
        return min(self.capacity, level + (now - at) * self.rate_per_s)

    def level(self, client: str) -> float:
        """What `client`'s bucket holds now (negative while it repays a debt)."""
        return self._level_at(client, self.clock())

    def take(self, client: str, amount: float) -> float:
        """Charge `amount` and return 0.0, or take nothing and return the seconds until it could."""
        now = self.clock()
        level = self._level_at(client, now)
        needed = min(amount, self.capacity)
        short = needed - level
        if short > self.capacity * _ROUNDING:  # float sums must not cost a whole extra second
            return round(short / self.rate_per_s, 6)
        self._levels[client] = (level - amount, now)
        if len(self._levels) >= self._sweep_at:
            # a bucket that has refilled is the same as no entry: forget it
            self._levels = {c: e for c, e in self._levels.items() if self._level_at(c, now) < self.capacity}
            self._sweep_at = max(_FIRST_SWEEP, 2 * len(self._levels))
        return 0.0


class InFlight:
    """Uploads in flight per client, at most `limit` each; remembers how long uploads take."""

    def __init__(self, limit: int):
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.limit = limit
        self._counts: dict[str, int] = {}
        self._mean_s: float | None = None

    def count(self, client: str) -> int:
        return self._counts.get(client, 0)

    def try_enter(self, client: str) -> bool:
        n = self._counts.get(client, 0)
        if n >= self.limit:
            return False
        self._counts[client] = n + 1
        return True

    def leave(self, client: str, duration_s: float) -> None:
        n = self._counts.get(client, 0) - 1
        if n > 0:
            self._counts[client] = n
        else:
            self._counts.pop(client, None)
        m = self._mean_s
        self._mean_s = duration_s if m is None else m + _MEAN_WEIGHT * (duration_s - m)

    def expected_wait_s(self) -> float:
        """A guess at when one of a client's uploads will finish: the recent mean upload time."""
        return self._mean_s if self._mean_s is not None else DEFAULT_UPLOAD_S


class ClientLimits:
    """The per-client limits of one app, and which clients were refused recently.

    `on_refusal(limit)` is told the name of the limit ("concurrency" or "megapixels") each time a
    client is refused; it never learns who (the metrics must not get a label per client).
    """

    def __init__(
        self,
        *,
        max_concurrent: int = 0,
        mpx_per_minute: float = 0.0,
        clock: Clock = time.monotonic,
        on_refusal: Callable[[str], None] | None = None,
    ):
        self.clock = clock
        self.in_flight = InFlight(max_concurrent) if max_concurrent > 0 else None
        self.bucket = TokenBucket(mpx_per_minute, clock) if mpx_per_minute > 0 else None
        self.on_refusal = on_refusal
        self._refused: dict[str, float] = {}  # client -> last refusal, oldest first

    @property
    def active(self) -> bool:
        return self.in_flight is not None or self.bucket is not None

    def start_upload(self, client: str) -> Callable[[], None]:
        """Take one of `client`'s in-flight slots (429 if it has none left); call the result when
        the upload is over to give it back."""
        if self.in_flight is None:
            return _nothing
        if not self.in_flight.try_enter(client):
            self._note_refusal(client, "concurrency")
            raise TooManyRequestsError(
                f"this client already has {self.in_flight.limit} upload(s) in progress, the most "
                "one client may have (ENHANCER_MAX_CONCURRENT_PER_CLIENT); wait for one to "
                "finish, then retry",
                retry_after_s=self.in_flight.expected_wait_s(),
            )
        in_flight, started, done = self.in_flight, self.clock(), False

        def finished() -> None:
            nonlocal done
            if not done:  # twice would free a slot someone else holds
                done = True
                in_flight.leave(client, self.clock() - started)

        return finished

    def charge_pixels(self, client: str, pixels: int) -> None:
        """Take `pixels` from `client`'s megapixel budget; 429 with the bucket's wait if short."""
        if self.bucket is None:
            return
        megapixels = pixels / 1e6
        wait_s = self.bucket.take(client, megapixels)
        if wait_s > 0:
            self._note_refusal(client, "megapixels")
            raise TooManyRequestsError(
                f"this {megapixels:.3g} MP image is more than is left of this client's "
                f"{self.bucket.capacity:g} megapixels per minute (ENHANCER_RATE_LIMIT_MPX_PER_MINUTE); "
                f"retry in {math.ceil(wait_s)} s",
                retry_after_s=wait_s,
            )

    def _note_refusal(self, client: str, limit: str) -> None:
        now = self.clock()
        self._refused.pop(client, None)  # re-inserted last: the dict stays ordered by time
        self._refused[client] = now
        self._forget_old_refusals(now)
        if self.on_refusal is not None:
            self.on_refusal(limit)

    def _forget_old_refusals(self, now: float) -> None:
        while self._refused:  # oldest first, so stop at the first recent one
            client, when = next(iter(self._refused.items()))
            if now - when <= RECENT_WINDOW_S:
                break
            del self._refused[client]

    def recently_limited(self) -> int:
        """Distinct clients refused by a limit within the last RECENT_WINDOW_S seconds."""
        self._forget_old_refusals(self.clock())
        return len(self._refused)
