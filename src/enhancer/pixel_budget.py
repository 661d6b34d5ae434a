"""The budget on pixels in flight: what bounds the memory of the images being decoded, split,
queued as tiles, stitched and encoded at once.

The tile queue bounds waiting work, but only once an image has been decoded and split; a few
small files that decode to tens of megapixels each could take the machine's memory before the
queue ever saw them. So every upload is charged its pixels from the image header, before anything
is decoded, and holds the charge until its answer has been sent (or it failed, or its client left
and its worker thread let go of the pixels). No HTTP here: `enhancer.api.pixel_budget` charges
uploads and releases them.

* What is charged: width x height from the header, times scale² for a model that enlarges (its
  answer has that many more pixels). A file of a supported format whose header cannot be read is
  charged the largest image allowed, as the decoder might still make a picture of it.
* Admission: an image is admitted when it fits under the budget, *or when nothing is in flight*:
  an image larger than the whole budget (but within ENHANCER_MAX_PIXELS) is served alone, and
  while it runs everything else is refused; under steady load it may need a few retries to find
  the server idle. Otherwise `PixelBudgetError` (503) with a `Retry-After` estimate.
* Retry-After: when the charges in flight are expected to have ended, oldest expected first, until
  the image would fit; each is expected to last its pixels times the seconds per pixel that
  recently answered uploads held their charges (1 s before any has).
* Default size (`default_budget`): a share of the memory the process may use, divided by the
  bytes a pixel in flight costs at its peak, measured (benchmarks/RESULTS.md, "Pixels in flight").
"""

from __future__ import annotations

import math
import os
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from enhancer.errors import PixelBudgetError

#: Peak resident bytes per image pixel in flight: the largest measured (a 16-bit image; 8-bit ones
#: cost less), rounded up to leave room for an alpha channel's samples, which were not measured.
#: The measurements: benchmarks/RESULTS.md, "Pixels in flight".
BYTES_PER_PIXEL = 20
#: Share of the process's memory the default budget may fill; the rest is the interpreter,
#: TensorFlow and the models, the upload bodies, and headroom.
MEMORY_SHARE = 0.5
#: Retry-After before any upload has been answered (nothing measured yet), as for the tile queue.
DEFAULT_RETRY_AFTER_S = 1.0
#: Recently answered uploads whose hold times estimate how long the ones in flight will take.
RECENT_RELEASES = 32

#: Where the memory limit of this process's cgroup is, v2 then v1 ("max" or a huge number: none).
_CGROUP_LIMITS = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")


def physical_memory_bytes() -> int:
    """The machine's RAM."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def memory_limit_bytes(cgroup_files: tuple[str, ...] = _CGROUP_LIMITS) -> int:
    """The memory this process may use: its container's (cgroup's) limit when one is set below the
    machine's RAM, else the machine's RAM."""
    physical = physical_memory_bytes()
    for path in cgroup_files:
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and 0 < int(text) < physical:
            return int(text)
    return physical


def default_budget(memory_bytes: int) -> int:
    """Pixels in flight that fill MEMORY_SHARE of `memory_bytes` at BYTES_PER_PIXEL each."""
    return max(1, int(memory_bytes * MEMORY_SHARE / BYTES_PER_PIXEL))


class Charge:
    """One upload's pixels, held from admission until `release()` (idempotent)."""

    def __init__(self, budget: PixelBudget, pixels: int, started: float):
        self.budget = budget
        self.pixels = pixels
        self.started = started
        self.released = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.budget._release(self)


class PixelBudget:
    """Pixels admitted and not yet released, at most `limit` (see the module docstring for the rule)."""

    def __init__(self, limit: int, clock: Callable[[], float] = time.monotonic):
        if limit < 1:
            raise ValueError(f"the pixel budget must be at least 1 pixel, got {limit}")
        self.limit = limit
        self.clock = clock
        self._held: set[Charge] = set()
        self._in_flight = 0
        self._recent: deque[tuple[int, float]] = deque(maxlen=RECENT_RELEASES)  # (pixels, seconds held)

    @property
    def in_flight(self) -> int:
        """Pixels charged and not yet released."""
        return self._in_flight

    def admit(self, pixels: int) -> Charge:
        """Charge `pixels` (the caller releases the Charge when done); PixelBudgetError if they do
        not fit now."""
        if pixels < 0:
            raise ValueError(f"pixels must be >= 0, got {pixels}")
        if self._in_flight > 0 and self._in_flight + pixels > self.limit:
            raise self._refusal(pixels)
        charge = Charge(self, pixels, self.clock())
        self._held.add(charge)
        self._in_flight += pixels
        return charge

    def _release(self, charge: Charge) -> None:
        self._held.discard(charge)
        self._in_flight -= charge.pixels
        if charge.pixels > 0:
            self._recent.append((charge.pixels, self.clock() - charge.started))

    def retry_after_s(self, pixels: int) -> float:
        """Seconds until an image of `pixels` is expected to be admitted (see the module docstring)."""
        held_s = sum(s for _, s in self._recent)
        released = sum(p for p, _ in self._recent)
        if not self._recent or held_s <= 0:
            return DEFAULT_RETRY_AFTER_S
        seconds_per_pixel = held_s / released
        # an image over the whole budget waits for everything; any other for enough to fit
        must_free = self._in_flight if pixels > self.limit else self._in_flight + pixels - self.limit
        now = self.clock()
        freed, wait = 0, 0.0
        for end, held in sorted((c.started + c.pixels * seconds_per_pixel, c.pixels) for c in self._held):
            freed += held
            wait = end - now
            if freed >= must_free:
                break
        return max(wait, DEFAULT_RETRY_AFTER_S)

    def _refusal(self, pixels: int) -> PixelBudgetError:
        wait = self.retry_after_s(pixels)
        mp = lambda n: f"{n / 1e6:.3g} MP"  # noqa: E731
        if pixels > self.limit:
            why = (
                f"this {mp(pixels)} image is larger than the {mp(self.limit)} budget for pixels in flight "
                "(ENHANCER_MAX_PIXELS_IN_FLIGHT), so it is served only when nothing else is in flight, "
                f"and {mp(self._in_flight)} are"
            )
        else:
            why = (
                f"{mp(self._in_flight)} are in flight and this image adds {mp(pixels)}, more than the "
                f"{mp(self.limit)} budget (ENHANCER_MAX_PIXELS_IN_FLIGHT)"
            )
        return PixelBudgetError(
            f"the server is busy: {why}; retry in about {math.ceil(wait)} s", retry_after_s=wait
        )
