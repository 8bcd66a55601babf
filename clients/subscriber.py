"""Subscriber to the intent event stream: typed events, filters, and notices of what was missed."""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Collection, Iterator, Sequence

import zmq
import zmq.asyncio

from intentd_client.keys import ClientKeys
from intentd_client.protocol import IntentEvent
from intentd_client.tracking import (
    DEFAULT_HEARTBEAT_TIMEOUT_S,
    DaemonDown,
    DaemonUp,
    Gap,
    Item,
    Notice,
    Restart,
    StreamStats,
    StreamTracker,
)

# The notices and the tracker live in tracking.py; callers import everything from here.
__all__ = [
    "DEFAULT_HEARTBEAT_TIMEOUT_S",
    "AsyncSubscriber",
    "DaemonDown",
    "DaemonUp",
    "Gap",
    "Notice",
    "Restart",
    "StreamStats",
    "StreamTracker",
    "Subscriber",
]

log = logging.getLogger(__name__)

DEFAULT_RCVHWM = 10_000
# A restarted daemon is found again within RECONNECT_IVL_MAX_MS of binding.
RECONNECT_IVL_MS = 100
RECONNECT_IVL_MAX_MS = 2_000
# ZMTP pings drop a TCP connection whose peer vanished without a FIN (host down, cable
# pulled); without them the SUB would keep the dead connection and never reconnect.
ZMTP_HEARTBEAT_IVL_MS = 1_000
ZMTP_HEARTBEAT_TIMEOUT_MS = 3_000
# Python runs a signal handler only between bytecodes: a Ctrl-C that lands after the last check
# but before the poll syscall starts is not seen until the poll returns. Polling in slices this
# long bounds that wait (it was up to the heartbeat timeout, and with no deadline, forever).
# asyncio wakes on signals itself; its subscriber shares the slices, which cost nothing.
SIGNAL_SLICE_MS = 200


def _configure(sock: zmq.Socket, rcvhwm: int) -> None:
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, rcvhwm)
    sock.setsockopt(zmq.RECONNECT_IVL, RECONNECT_IVL_MS)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, RECONNECT_IVL_MAX_MS)
    sock.setsockopt(zmq.HEARTBEAT_IVL, ZMTP_HEARTBEAT_IVL_MS)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, ZMTP_HEARTBEAT_TIMEOUT_MS)
    # Every topic, not just the ones wanted: seq counts messages of all topics, so gap
    # detection needs them all, and heartbeats are needed for liveness anyway.
    sock.setsockopt(zmq.SUBSCRIBE, b"")


class _SubscriberBase:
    """State shared by the sync and asyncio subscribers; the transport loop is theirs."""

    def __init__(
        self,
        endpoint: str,
        sock: zmq.Socket,
        intents: Collection[str] | None,
        min_score: float | None,
        timeout_s: float | None,
        heartbeat_timeout_s: float,
        heartbeats: bool,
        rcvhwm: int,
        keys: ClientKeys | None,
    ) -> None:
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self.tracker = StreamTracker(
            time.monotonic(),
            intents=intents,
            min_score=min_score,
            heartbeat_timeout_s=heartbeat_timeout_s,
            heartbeats=heartbeats,
        )
        self._pending: deque[Item] = deque()
        self._socket = sock
        try:
            _configure(sock, rcvhwm)
            if keys is not None:
                keys.apply(sock)
            sock.connect(endpoint)
        except zmq.ZMQError:
            sock.close(linger=0)
            raise
        log.info("subscribed to %s", endpoint)

    @property
    def stats(self) -> StreamStats:
        """Counters: received, malformed, wrong_version, gaps, missed, restarts, …"""
        return self.tracker.stats

    def close(self) -> None:
        """Close the socket; pending items are dropped."""
        if not self._socket.closed:
            self._socket.close(linger=0)

    def _ingest(self, frames: Sequence[bytes]) -> None:
        self._pending.extend(self.tracker.feed(frames, time.monotonic()))

    def _tick(self) -> float:
        now = time.monotonic()
        self._pending.extend(self.tracker.tick(now))
        return now

    def _poll_ms(self, now: float, deadline: float | None) -> int:
        """How long to poll: until the caller's deadline or the liveness check, at most a slice."""
        waits = [t - now for t in (deadline, self.tracker.next_deadline()) if t is not None]
        if not waits:
            return SIGNAL_SLICE_MS
        # +1 ms so the tracker's deadline has really passed when poll returns.
        return min(SIGNAL_SLICE_MS, max(0, math.ceil(min(waits) * 1000)) + 1)

    @staticmethod
    def _deadline(timeout_s: float | None) -> float | None:
        return None if timeout_s is None else time.monotonic() + timeout_s


class Subscriber(_SubscriberBase):
    """Blocking subscriber; iterating yields IntentEvent and Notice items (Heartbeat if asked).

    Use it from one thread. Items come in wire order; a notice precedes the message that
    revealed it (DaemonUp, then Restart or Gap, then the message). Pass `keys` for a daemon
    that requires CURVE; a refused key looks like a daemon that never answers (DaemonDown).
    """

    def __init__(
        self,
        endpoint: str,
        intents: Collection[str] | None = None,
        min_score: float | None = None,
        timeout_s: float | None = None,
        heartbeat_timeout_s: float = DEFAULT_HEARTBEAT_TIMEOUT_S,
        context: zmq.Context | None = None,
        heartbeats: bool = False,
        rcvhwm: int = DEFAULT_RCVHWM,
        keys: ClientKeys | None = None,
    ) -> None:
        ctx = context if context is not None else zmq.Context.instance()
        super().__init__(
            endpoint,
            ctx.socket(zmq.SUB),
            intents,
            min_score,
            timeout_s,
            heartbeat_timeout_s,
            heartbeats,
            rcvhwm,
            keys,
        )

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[Item]:
        """Yield items until none arrives within `timeout_s` (forever when None)."""
        while (item := self.recv(self.timeout_s)) is not None:
            yield item

    def events(self) -> Iterator[IntentEvent]:
        """Yield only intent events; notices are still counted and logged."""
        for item in self:
            if isinstance(item, IntentEvent):
                yield item

    def recv(self, timeout_s: float | None = None) -> Item | None:
        """Next item, or None when nothing arrives within `timeout_s` (None: wait forever)."""
        if self._pump(self._deadline(timeout_s), lambda: bool(self._pending)):
            return self._pending.popleft()
        return None

    def wait_ready(self, timeout_s: float) -> bool:
        """Block until the first valid message arrives (ZMQ slow joiner); False on timeout."""
        return self._pump(self._deadline(timeout_s), lambda: self.tracker.ready)

    def _pump(self, deadline: float | None, done: Callable[[], bool]) -> bool:
        while not done():
            try:
                self._ingest(self._socket.recv_multipart(zmq.NOBLOCK))
                continue
            except zmq.Again:
                pass
            # Liveness is judged only after the socket is drained, so a consumer that was
            # busy for a while does not see a false DaemonDown.
            now = self._tick()
            if done():
                break
            if deadline is not None and now >= deadline:
                return False
            self._socket.poll(self._poll_ms(now, deadline), zmq.POLLIN)
        return True


class AsyncSubscriber(_SubscriberBase):
    """asyncio subscriber with the same items, filters and notices as Subscriber."""

    def __init__(
        self,
        endpoint: str,
        intents: Collection[str] | None = None,
        min_score: float | None = None,
        timeout_s: float | None = None,
        heartbeat_timeout_s: float = DEFAULT_HEARTBEAT_TIMEOUT_S,
        context: zmq.asyncio.Context | None = None,
        heartbeats: bool = False,
        rcvhwm: int = DEFAULT_RCVHWM,
        keys: ClientKeys | None = None,
    ) -> None:
        ctx = context if context is not None else zmq.asyncio.Context.instance()
        super().__init__(
            endpoint,
            ctx.socket(zmq.SUB),
            intents,
            min_score,
            timeout_s,
            heartbeat_timeout_s,
            heartbeats,
            rcvhwm,
            keys,
        )

    async def __aenter__(self) -> AsyncSubscriber:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    async def __aiter__(self) -> AsyncIterator[Item]:
        """Yield items until none arrives within `timeout_s` (forever when None)."""
        while (item := await self.recv(self.timeout_s)) is not None:
            yield item

    async def events(self) -> AsyncIterator[IntentEvent]:
        """Yield only intent events; notices are still counted and logged."""
        async for item in self:
            if isinstance(item, IntentEvent):
                yield item

    async def recv(self, timeout_s: float | None = None) -> Item | None:
        """Next item, or None when nothing arrives within `timeout_s` (None: wait forever)."""
        if await self._pump(self._deadline(timeout_s), lambda: bool(self._pending)):
            return self._pending.popleft()
        return None

    async def wait_ready(self, timeout_s: float) -> bool:
        """Wait until the first valid message arrives (ZMQ slow joiner); False on timeout."""
        return await self._pump(self._deadline(timeout_s), lambda: self.tracker.ready)

    async def _pump(self, deadline: float | None, done: Callable[[], bool]) -> bool:
        while not done():
            try:
                self._ingest(await self._socket.recv_multipart(zmq.NOBLOCK))
                continue
            except zmq.Again:
                pass
            now = self._tick()
            if done():
                break
            if deadline is not None and now >= deadline:
                return False
            await self._socket.poll(self._poll_ms(now, deadline), zmq.POLLIN)
        return True
