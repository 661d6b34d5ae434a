"""Large short-lived arrays on small pages: numpy's transparent-huge-page advice turned off.

numpy advises the kernel to back every array of 4 MB or more with transparent huge pages. Where the
kernel's THP defrag policy is `madvise` (a common default), the first touch of such an array may
then wait while the kernel compacts memory to find huge pages. The server allocates and frees
several such arrays per large image (decoded pixels, tiles, outputs, the stitched answer, the PNG's
scanlines), so those stalls land on requests at random; small pages cost a little on every array
instead (both measured in benchmarks/RESULTS.md, "Huge pages"). `prefer_small_pages` sets numpy's
own switch, `NUMPY_MADVISE_HUGEPAGE=0`, unless the environment already chose; numpy reads it once,
when it is imported, so the package calls this before any of its modules can import numpy (if
numpy was imported first, it keeps what it read then, and `SMALL_PAGES` says so).
"""

from __future__ import annotations

import os
import sys

#: numpy's switch: "0" = no huge-page advice, "1" = advise (numpy's default on Linux).
VARIABLE = "NUMPY_MADVISE_HUGEPAGE"


def prefer_small_pages() -> bool:
    """Ask numpy for small pages unless the environment set VARIABLE; whether numpy will use
    small pages (False too when numpy was imported before this ran)."""
    os.environ.setdefault(VARIABLE, "0")
    return os.environ[VARIABLE] == "0" and "numpy" not in sys.modules
