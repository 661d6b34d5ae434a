"""`enhancer serve`'s uvicorn server: a SIGTERM drains the app before uvicorn starts shutting down.

Plain uvicorn, on SIGTERM, closes its listening socket at once, waits for open connections (up to
`timeout_graceful_shutdown`), and only then runs the app's lifespan shutdown, which gives the
batcher its own `shutdown_timeout_s`: two timeouts in a row, and no moment in which `/readyz` says
503 while the port still answers. Here the first signal instead

1. starts `Runtime.drain`: `/readyz` 503, new uploads 503, the port stays open;
2. waits for the uploads in flight (bounded by the shutdown deadline);
3. then lets uvicorn shut down with what is left of the same deadline, for the connections and for
   the batcher (`Runtime.stop` uses the deadline `drain` set).

A second SIGINT/SIGTERM falls through to uvicorn's own handling (a second Ctrl-C forces exit).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from types import FrameType

import uvicorn

from enhancer.runtime import Runtime

log = logging.getLogger(__name__)


class DrainingServer(uvicorn.Server):
    """uvicorn.Server whose first SIGTERM/SIGINT drains `runtime` before the usual shutdown."""

    def __init__(self, config: uvicorn.Config, runtime: Runtime, shutdown_timeout_s: float):
        super().__init__(config)
        self.runtime = runtime
        self.shutdown_timeout_s = shutdown_timeout_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain_task: asyncio.Task | None = None

    async def serve(self, sockets=None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._drain_task is not None or self.should_exit or self._loop is None or not self.started:
            super().handle_exit(sig, frame)  # second signal, or nothing to drain yet
            return
        self._captured_signals.append(sig)  # re-raised after serving, as uvicorn does
        # A signal handler runs between two bytecodes of the loop's thread: hand over to the loop.
        self._loop.call_soon_threadsafe(self._start_drain, signal.Signals(sig).name)

    def _start_drain(self, name: str) -> None:
        if self._drain_task is None:
            self._drain_task = asyncio.ensure_future(self._drain(name))

    async def _drain(self, name: str) -> None:
        started = time.monotonic()
        log.info("%s: draining (at most %.0f s in all)", name, self.shutdown_timeout_s)
        try:
            await self.runtime.drain(self.shutdown_timeout_s)
        except Exception:  # never leave the server running because the drain broke
            log.exception("drain failed; shutting down now")
        left = max(0.0, self.shutdown_timeout_s - (time.monotonic() - started))
        self.config.timeout_graceful_shutdown = left  # type: ignore[assignment]  # a float works
        self.should_exit = True
