"""SIGTERM as orchestrators expect it: not ready at once, in-flight requests finish, then exit 0.

On SIGTERM the front door keeps listening but turns not-ready: /ready answers 503, new requests get 503 with
Retry-After, /health stays as it is (liveness). Once no request is in flight, or ``drain_timeout_s`` after the
signal, uvicorn shuts down as usual (the replicas get SIGTERM and are waited for) and the process exits 0; a request
still running at the timeout is cut off. SIGTERM before the replicas are up, and SIGINT (Ctrl-C reaches the whole
process group, replicas too), keep uvicorn's own handling: stop listening, drain, end by the signal.
"""
from __future__ import annotations

import logging
import signal
import sys
import time

import uvicorn

log = logging.getLogger("fastgen.server")
SHUTDOWN_GRACE_S = 2.0      # after the drain: for uvicorn to send the last bytes and close the connections
CUT_OFF_GRACE_S = 0.5       # at the drain timeout: then what still runs is cancelled (its replica aborts it)


class DrainingServer(uvicorn.Server):
    """uvicorn's Server with SIGTERM drained as above, through its two hooks: ``handle_exit`` (the signal handler)
    and ``on_tick`` (its main loop's periodic check). ``backend`` is the RouterBackend (``draining``, ``in_flight``)."""

    def __init__(self, config: uvicorn.Config, backend, drain_timeout_s: float):
        super().__init__(config)
        self.backend = backend
        self.drain_timeout_s = drain_timeout_s
        self.drain_deadline: float | None = None
        self._announced = False

    def handle_exit(self, sig, frame) -> None:
        # a signal handler: it only flags the drain, which on_tick (every 0.1 s of uvicorn's main loop) carries out
        if sig == signal.SIGTERM and self.started and not self.should_exit:
            if self.drain_deadline is None:
                self.backend.draining = True
                self.drain_deadline = time.monotonic() + self.drain_timeout_s
            return                   # not captured: uvicorn does not raise it again, so the process exits 0
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        if self.drain_deadline is not None and not self.should_exit:
            left, busy = self.drain_deadline - time.monotonic(), self.backend.in_flight
            if not self._announced:
                self._announced = True
                print(f"fastgen: SIGTERM: draining (/ready says 503, new requests get 503); {busy} request(s) in "
                      f"flight, waiting up to {self.drain_timeout_s:g}s for them", file=sys.stderr, flush=True)
            if busy == 0 or left <= 0:
                if busy:
                    log.warning("drain timeout (%gs) reached with %d request(s) still in flight: cutting them off",
                                self.drain_timeout_s, busy)
                self.config.timeout_graceful_shutdown = SHUTDOWN_GRACE_S if busy == 0 else CUT_OFF_GRACE_S
                self.should_exit = True
        return await super().on_tick(counter)
