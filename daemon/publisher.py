"""The event publisher: numbers messages and sends them on one ZeroMQ PUB socket."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import zmq

from intentd.security import CurveServer, bind_checked
from intentd_client.protocol import (
    TOPIC_HEARTBEAT,
    TOPIC_INTENT,
    Heartbeat,
    IntentEvent,
    LabelScore,
    Latency,
)

log = logging.getLogger(__name__)

# A subscriber that stops reading must not stall the daemon: past this many queued messages per
# subscriber, ZeroMQ PUB drops new messages for that subscriber only (seq gaps tell it so).
SNDHWM_MESSAGES = 10_000
# What subscribers send a PUB: (un)subscriptions and handshake commands (a CURVE INITIATE is
# about 300 bytes). Anything larger drops that peer's connection instead of being buffered.
MAX_INBOUND_BYTES = 4096
RCVHWM_MESSAGES = 1000  # queued subscription messages, all peers together
LINGER_MS = 500


@dataclass(frozen=True)
class Result:
    """A classified utterance on its way to the publisher."""

    source: str
    intent: str
    score: float
    top_k: tuple[tuple[str, float], ...]
    start_s: float
    end_s: float
    cut_at: float  # time.monotonic() when the segmenter cut the utterance (latency_ms.total runs from here)
    queue_ms: float
    inference_ms: float
    model: str


class Publisher:
    """Owns the PUB socket (when an endpoint is given); call it from one thread only.

    `curve` (running) arms the socket as a CURVE server where security.bind_checked requires it.
    """

    def __init__(
        self,
        endpoint: str | None,
        run_id: str,
        context: zmq.Context | None = None,
        on_intent: Callable[[IntentEvent], None] | None = None,
        curve: CurveServer | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.run_id = run_id
        self.on_intent = on_intent
        self.seq = 0
        self.socket: zmq.Socket | None = None
        if endpoint:
            ctx = context or zmq.Context.instance()
            sock = ctx.socket(zmq.PUB)
            sock.setsockopt(zmq.SNDHWM, SNDHWM_MESSAGES)
            sock.setsockopt(zmq.RCVHWM, RCVHWM_MESSAGES)
            sock.setsockopt(zmq.LINGER, LINGER_MS)
            bind_checked(sock, endpoint, "publish endpoint", "--publish", MAX_INBOUND_BYTES, curve)
            self.socket = sock
            log.info("publishing on %s", endpoint)

    def _next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def _send(self, topic: str, payload: str) -> None:
        if self.socket is not None:
            self.socket.send_multipart([topic.encode(), payload.encode()])

    def publish_intent(self, r: Result) -> IntentEvent:
        """Send one intent event; returns it as published."""
        now = time.monotonic()
        event = IntentEvent(
            seq=self._next_seq(),
            run_id=self.run_id,
            source=r.source,
            intent=r.intent,
            score=round(r.score, 6),
            top_k=tuple(LabelScore(label, round(s, 6)) for label, s in r.top_k),
            start_s=round(r.start_s, 3),
            end_s=round(r.end_s, 3),
            wall_time=time.time(),
            latency_ms=Latency(
                queue=round(r.queue_ms, 2),
                inference=round(r.inference_ms, 2),
                total=round((now - r.cut_at) * 1000.0, 2),
            ),
            model=r.model,
        )
        self._send(TOPIC_INTENT, event.to_json())
        if self.on_intent is not None:
            self.on_intent(event)
        return event

    def publish_heartbeat(self, uptime_s: float, stats: dict[str, float]) -> Heartbeat:
        """Send one heartbeat with the pipeline's counters."""
        hb = Heartbeat(seq=self._next_seq(), run_id=self.run_id, uptime_s=round(uptime_s, 3), stats=stats)
        self._send(TOPIC_HEARTBEAT, hb.to_json())
        return hb

    def close(self) -> None:
        """Close the socket, letting queued messages go out for up to LINGER_MS."""
        if self.socket is not None:
            self.socket.close()
            self.socket = None
