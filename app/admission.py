"""Admission control for the API process: per-client rate limits (429) and a bound on the
prediction work one process holds at once (503). Both answer with Retry-After, so a well
behaved client backs off instead of retrying in a loop, and neither grows a queue without bound.

A client is its API key once keys exist (issue 10, part 1); until then it is its address.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from fastapi import Request

from app.problems import Problem


def client_identity(request: Request) -> str:
    key_id = getattr(request.state, "key_id", None)
    if key_id:
        return f"key:{key_id}"
    return f"addr:{request.client.host if request.client else 'unknown'}"


class RateLimiter:
    """Token buckets per client: `per_minute` tokens refill continuously, a full bucket holds a
    minute's worth (so a client may burst that much after being idle). Memory is bounded: the
    least recently seen clients are forgotten beyond `max_clients` (a forgotten client starts
    with a full bucket, which only ever errs toward allowing)."""

    def __init__(self, per_minute: float, name: str, max_clients: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.capacity, self.name = per_minute / 60.0, float(per_minute), name
        self.max_clients, self.clock = max_clients, clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # client -> (tokens, at)
        self._lock = threading.Lock()

    def take(self, client: str, n: float = 1.0) -> None:
        """Spend `n` tokens or raise 429 saying when `n` will be there. A request larger than a
        whole bucket can never pass, so it gets 413 rather than a Retry-After that lies."""
        if n > self.capacity:
            raise Problem(413, "Request larger than the rate limit",
                          f"{n:g} {self.name} in one request; at most {self.capacity:g} per minute are allowed.")
        now = self.clock()
        with self._lock:
            tokens, at = self._buckets.pop(client, (self.capacity, now))
            tokens = min(self.capacity, tokens + (now - at) * self.rate)
            if tokens < n:
                self._buckets[client] = (tokens, now)
                wait = math.ceil((n - tokens) / self.rate)
                raise Problem(429, "Too many requests",
                              f"The limit is {self.capacity:g} {self.name} per minute; retry in {wait} s.",
                              headers={"Retry-After": str(wait)})
            self._buckets[client] = (tokens - n, now)
            while len(self._buckets) > self.max_clients:
                self._buckets.popitem(last=False)


class InflightGate:
    """At most `cap` units (images) admitted at once in this process."""

    def __init__(self, cap: int) -> None:
        self.cap, self.current = cap, 0
        self._lock = threading.Lock()

    def check_fits(self, n: int) -> None:
        """413 for a request that could never pass (retrying would not help)."""
        if n > self.cap:
            raise Problem(413, "Too many images in one request",
                          f"{n} images; this server predicts at most {self.cap} at once "
                          "(HISTOSYNTH_PREDICT_MAX_INFLIGHT_IMAGES).")

    @contextmanager
    def admit(self, n: int) -> Iterator[None]:
        self.check_fits(n)
        with self._lock:
            if self.current + n > self.cap:
                raise Problem(503, "Busy", f"{self.current} images are being predicted in this process; "
                              f"at most {self.cap} at once. Retry shortly.", headers={"Retry-After": "1"})
            self.current += n
        try:
            yield
        finally:
            with self._lock:
                self.current -= n
