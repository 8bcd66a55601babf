"""What a subscriber tracks, with no sockets: parsing, filters, seq gaps, restarts and liveness.

`StreamTracker` is the one place messages are parsed and judged; the sync and asyncio subscribers
(subscriber.py) only move frames into it.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from dataclasses import dataclass

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
