"""Wire messages of the intent event stream, version 1 (stdlib only; the daemon imports these)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

PROTOCOL_VERSION = 1
TOPIC_INTENT = "intent"
TOPIC_HEARTBEAT = "heartbeat"
UNKNOWN_INTENT = "unknown"


class ProtocolError(ValueError):
    """A message that is not valid JSON, not an object, or of another major version."""


class VersionError(ProtocolError):
    """A message that carries another major protocol version than this client speaks."""


@dataclass(frozen=True)
class LabelScore:
    """One entry of an event's top-k list."""

    label: str
    score: float


@dataclass(frozen=True)
class Latency:
    """Milliseconds an utterance spent waiting for the worker, in the model, and end to end."""

    queue: float
    inference: float
    total: float


@dataclass(frozen=True)
class IntentEvent:
    """One classified utterance (topic `intent`)."""

    TYPE: ClassVar[str] = "intent"
    seq: int
    run_id: str
    source: str
    intent: str
    score: float
    top_k: tuple[LabelScore, ...]
    start_s: float
    end_s: float
    wall_time: float
    latency_ms: Latency
    model: str
    v: int = PROTOCOL_VERSION
    type: str = field(default="intent")

    def to_json(self) -> str:
        """Serialise to the v1 JSON text."""
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> IntentEvent:
        """Build from a decoded v1 object; unknown keys are ignored for forward compatibility."""
        try:
            return cls(
                seq=int(d["seq"]),
                run_id=str(d["run_id"]),
                source=str(d["source"]),
                intent=str(d["intent"]),
                score=float(d["score"]),
                top_k=tuple(LabelScore(str(e["label"]), float(e["score"])) for e in d["top_k"]),
                start_s=float(d["start_s"]),
                end_s=float(d["end_s"]),
                wall_time=float(d["wall_time"]),
                latency_ms=Latency(**{k: float(d["latency_ms"][k]) for k in _LATENCY_KEYS}),
                model=str(d["model"]),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ProtocolError(f"bad intent message: {e!r}") from e

    @classmethod
    def from_json(cls, text: str | bytes) -> IntentEvent:
        """Parse v1 JSON text."""
        return cls.from_dict(_decode(text, cls.TYPE))


_LATENCY_KEYS = ("queue", "inference", "total")


@dataclass(frozen=True)
class Heartbeat:
    """Liveness and counters, published once a second (topic `heartbeat`)."""

    TYPE: ClassVar[str] = "heartbeat"
    seq: int
    run_id: str
    uptime_s: float
    stats: dict[str, float] = field(default_factory=dict)
    v: int = PROTOCOL_VERSION
    type: str = field(default="heartbeat")

    def to_json(self) -> str:
        """Serialise to the v1 JSON text."""
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Heartbeat:
        """Build from a decoded v1 object; unknown keys are ignored."""
        try:
            stats = d.get("stats", {})
            if not isinstance(stats, dict):
                raise TypeError("stats is not an object")
            return cls(
                seq=int(d["seq"]),
                run_id=str(d["run_id"]),
                uptime_s=float(d["uptime_s"]),
                stats=dict(stats),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ProtocolError(f"bad heartbeat message: {e!r}") from e

    @classmethod
    def from_json(cls, text: str | bytes) -> Heartbeat:
        """Parse v1 JSON text."""
        return cls.from_dict(_decode(text, cls.TYPE))


Message = IntentEvent | Heartbeat
_BY_TYPE: dict[str, type[IntentEvent] | type[Heartbeat]] = {
    IntentEvent.TYPE: IntentEvent,
    Heartbeat.TYPE: Heartbeat,
}


def _decode(text: str | bytes, expected_type: str | None = None) -> dict[str, Any]:
    try:
        d = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ProtocolError(f"malformed JSON: {e}") from e
    if not isinstance(d, dict):
        raise ProtocolError("message is not a JSON object")
    v = d.get("v")
    if not isinstance(v, int) or isinstance(v, bool):
        raise ProtocolError(f"missing or non-integer protocol version {v!r}")
    if v != PROTOCOL_VERSION:
        raise VersionError(f"unsupported protocol version {v!r} (this client speaks {PROTOCOL_VERSION})")
    if expected_type is not None and d.get("type") != expected_type:
        raise ProtocolError(f"expected type {expected_type!r}, got {d.get('type')!r}")
    return d


def parse_message(topic: bytes | str, payload: bytes | str) -> Message:
    """Parse one multipart `[topic, json]` message into its typed class."""
    if isinstance(topic, bytes):
        topic = topic.decode("utf-8", errors="replace")
    d = _decode(payload)
    kind = d.get("type")
    if kind != topic:
        raise ProtocolError(f"topic {topic!r} does not match message type {kind!r}")
    cls = _BY_TYPE.get(str(kind))
    if cls is None:
        raise ProtocolError(f"unknown message type {kind!r}")
    return cls.from_dict(d)
