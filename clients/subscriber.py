"""Subscriber to the intent event stream: typed events, filters, and notices of what was missed."""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Collection, Iterator, Sequence
from dataclasses import dataclass

import zmq
import zmq.asyncio

from intentd_client.keys import ClientKeys
from intentd_client.protocol import (
    TOPIC_HEARTBEAT,
    TOPIC_INTENT,
    Heartbeat,
    IntentEvent,
    ProtocolError,
    VersionError,
    parse_message,
)

log = logging.getLogger(__name__)

DEFAULT_HEARTBEAT_TIMEOUT_S = 3.0
DEFAULT_RCVHWM = 10_000
# A restarted daemon is found again within RECONNECT_IVL_MAX_MS of binding.
RECONNECT_IVL_MS = 100
RECONNECT_IVL_MAX_MS = 2_000
# ZMTP pings drop a TCP connection whose peer vanished without a FIN (host down, cable
# pulled); without them the SUB would keep the dead connection and never reconnect.
ZMTP_HEARTBEAT_IVL_MS = 1_000
ZMTP_HEARTBEAT_TIMEOUT_MS = 3_000
_KNOWN_TOPICS = frozenset({TOPIC_INTENT, TOPIC_HEARTBEAT})


@dataclass(frozen=True)
class Notice:
    """Base of the stream-health items delivered alongside events."""

    def describe(self) -> str:
        """One human-readable line."""
        raise NotImplementedError


@dataclass(frozen=True)
class Gap(Notice):
    """Messages of the current daemon run were lost between `expected_seq` and `got_seq`."""

    expected_seq: int
    got_seq: int
    missed: int

    def describe(self) -> str:
        """One human-readable line."""
        return f"gap: missed {self.missed} message(s) (expected seq {self.expected_seq}, got {self.got_seq})"


@dataclass(frozen=True)
class Restart(Notice):
    """The daemon restarted (its run_id changed); seq starts over and nothing is compared."""

    old_run_id: str
    new_run_id: str

    def describe(self) -> str:
        """One human-readable line."""
        return f"daemon restarted: run {self.old_run_id} -> {self.new_run_id}"


@dataclass(frozen=True)
class DaemonDown(Notice):
    """Nothing arrived for longer than the heartbeat timeout."""

    silent_s: float

    def describe(self) -> str:
        """One human-readable line."""
        return f"daemon down: no message for {self.silent_s:.1f} s"


@dataclass(frozen=True)
class DaemonUp(Notice):
    """Messages arrive again after a DaemonDown."""

    down_s: float

    def describe(self) -> str:
        """One human-readable line."""
        return f"daemon up again after {self.down_s:.1f} s of silence"


Item = IntentEvent | Heartbeat | Notice


@dataclass
class StreamStats:
    """Counters of one subscriber; every message off the socket lands in exactly one bucket."""

    received: int = 0  # multipart messages read off the socket
    intents: int = 0  # valid intent events, delivered or filtered
    filtered: int = 0  # valid intent events dropped by the intent/min_score filter
    heartbeats: int = 0
    malformed: int = 0  # bad JSON, bad fields, wrong frame count, topic/type mismatch
    wrong_version: int = 0
    other_topic: int = 0  # topics this client does not know (skipped)
    gaps: int = 0
    missed: int = 0  # messages lost in all gaps together
    restarts: int = 0
    out_of_order: int = 0  # seq went backwards within one run (publisher bug)
    daemon_down: int = 0


class StreamTracker:
    """Transport-free core: parses messages, tracks seq, run_id and liveness, applies filters.

    Notices are returned to the caller and logged at INFO only; messages that cannot be
    read are counted in `stats` and logged at WARNING.
    """

    def __init__(
        self,
        now: float,
        intents: Collection[str] | None = None,
        min_score: float | None = None,
        heartbeat_timeout_s: float = DEFAULT_HEARTBEAT_TIMEOUT_S,
        heartbeats: bool = False,
    ) -> None:
        if heartbeat_timeout_s <= 0:
            raise ValueError(f"heartbeat_timeout_s must be > 0, got {heartbeat_timeout_s}")
        self.intents = None if intents is None else frozenset(intents)
        self.min_score = min_score
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.heartbeats = heartbeats
        self.stats = StreamStats()
        self.run_id: str | None = None
        self._next_seq = 0
        # The silence clock starts at creation, so a daemon that never answers is reported too.
        self._last_seen_at = now
        self._down_since: float | None = None
        self._unknown_topics: set[str] = set()

    @property
    def ready(self) -> bool:
        """True once one valid message has arrived (the slow-joiner handshake is over)."""
        return self.run_id is not None

    @property
    def daemon_up(self) -> bool:
        """False between a DaemonDown and the next message."""
        return self._down_since is None

    def next_deadline(self) -> float | None:
        """Time at which `tick` would report DaemonDown; None while already down."""
        if self._down_since is not None:
            return None
        return self._last_seen_at + self.heartbeat_timeout_s

    def tick(self, now: float) -> list[Notice]:
        """Report DaemonDown once when nothing arrived for longer than the heartbeat timeout."""
        silent_s = now - self._last_seen_at
        if self._down_since is None and silent_s > self.heartbeat_timeout_s:
            self._down_since = self._last_seen_at
            self.stats.daemon_down += 1
            log.info("no message from the daemon for %.1f s", silent_s)
            return [DaemonDown(silent_s=silent_s)]
        return []

    def feed(self, frames: Sequence[bytes], now: float) -> list[Item]:
        """Take one multipart message; return the notices it raises and the message if wanted."""
        self.stats.received += 1
        out: list[Item] = []
        # Any traffic, even a message we cannot read, proves the daemon is there.
        if self._down_since is not None:
            out.append(DaemonUp(down_s=now - self._down_since))
            log.info("daemon is back after %.1f s", now - self._down_since)
            self._down_since = None
        self._last_seen_at = now
        msg = self._parse(frames)
        if msg is None:
            return out
        out.extend(self._track_seq(msg))
        if isinstance(msg, Heartbeat):
            self.stats.heartbeats += 1
            if self.heartbeats:
                out.append(msg)
            return out
        self.stats.intents += 1
        if self.accepts(msg):
            out.append(msg)
        else:
            self.stats.filtered += 1
        return out

    def accepts(self, event: IntentEvent) -> bool:
        """Whether an event passes the intent and min_score filters."""
        if self.intents is not None and event.intent not in self.intents:
            return False
        return self.min_score is None or event.score >= self.min_score

    def _parse(self, frames: Sequence[bytes]) -> IntentEvent | Heartbeat | None:
        if len(frames) != 2:
            self.stats.malformed += 1
            log.warning("skipped a message of %d frame(s); expected [topic, json]", len(frames))
            return None
        topic = frames[0].decode("utf-8", errors="replace")
        # Exact match: a ZMQ prefix filter "intent" would also pass "intent_partial".
        if topic not in _KNOWN_TOPICS:
            self.stats.other_topic += 1
            if topic not in self._unknown_topics:
                self._unknown_topics.add(topic)
                log.warning("skipping messages on unknown topic %r", topic)
            return None
        try:
            return parse_message(topic, frames[1])
        except VersionError as e:
            self.stats.wrong_version += 1
            log.warning("skipped a %s message: %s", topic, e)
        except ProtocolError as e:
            self.stats.malformed += 1
            log.warning("skipped a malformed %s message: %s", topic, e)
        return None

    def _track_seq(self, msg: IntentEvent | Heartbeat) -> list[Notice]:
        out: list[Notice] = []
        if self.run_id is None:
            log.info("joined daemon run %s at seq %d", msg.run_id, msg.seq)
        elif msg.run_id != self.run_id:
            self.stats.restarts += 1
            log.info("daemon restarted: run %s -> %s", self.run_id, msg.run_id)
            out.append(Restart(old_run_id=self.run_id, new_run_id=msg.run_id))
        elif msg.seq > self._next_seq:
            missed = msg.seq - self._next_seq
            self.stats.gaps += 1
            self.stats.missed += missed
            log.info("missed %d message(s) before seq %d", missed, msg.seq)
            out.append(Gap(expected_seq=self._next_seq, got_seq=msg.seq, missed=missed))
        elif msg.seq < self._next_seq:
            self.stats.out_of_order += 1
            log.warning("seq went back from %d to %d within run %s", self._next_seq - 1, msg.seq, msg.run_id)
        self.run_id = msg.run_id
        self._next_seq = msg.seq + 1
        return out


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

    def _poll_ms(self, now: float, deadline: float | None) -> int | None:
        """How long to poll: until the caller's deadline or the liveness check, if any."""
        waits = [t - now for t in (deadline, self.tracker.next_deadline()) if t is not None]
        if not waits:
            return None
        # +1 ms so the tracker's deadline has really passed when poll returns.
        return max(0, math.ceil(min(waits) * 1000)) + 1

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
