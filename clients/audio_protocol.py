"""Wire messages of the audio replay stream, version 1 (stdlib only; the daemon imports these).

A sender (`intentd send`, or any ZeroMQ DEALER) streams PCM into the daemon's network source
(a ROUTER): `start`, then `chunk`s, then `end`, per stream; the daemon answers with `ack`s.
Every message is two ZeroMQ frames: `[header, payload]`, the header one JSON object, the
payload raw PCM for `chunk` and empty otherwise. See AUDIO_PROTOCOL.md.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

AUDIO_PROTOCOL_VERSION = 1
# The daemon's supported range (intentd.audio.MIN_RATE_HZ/MAX_RATE_HZ; a test keeps them equal).
MIN_RATE_HZ = 1000
MAX_RATE_HZ = 384_000
MAX_CHANNELS = 32
MAX_HEADER_BYTES = 1024
MAX_CHUNK_BYTES = 1 << 20
MAX_CHUNK_S = 1.0
MAX_SEQ = 2**53 - 1  # exact in every JSON implementation
MAX_STREAM_ID_CHARS = 64
STREAM_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
# Bytes per sample of each format; all little-endian, interleaved by frame.
SAMPLE_FORMATS: dict[str, int] = {"s16le": 2, "s24le": 3, "f32le": 4}

SampleFormat = Literal["s16le", "s24le", "f32le"]
AckStatus = Literal["started", "ended", "rejected"]

# Why a message was refused: a FrameError's reason, a rejected ack's reason, a stats key suffix.
R_MALFORMED = "malformed"  # not [header, payload], not a JSON object, missing or mistyped field
R_VERSION = "version"  # another major version
R_TYPE = "type"  # unknown message type
R_STREAM_ID = "stream_id"  # empty, too long or outside [A-Za-z0-9._-]
R_FORMAT = "format"  # sample format outside SAMPLE_FORMATS
R_RATE = "rate"  # sample rate outside MIN_RATE_HZ..MAX_RATE_HZ
R_CHANNELS = "channels"  # channel count outside 1..MAX_CHANNELS
R_OVERSIZE = "oversize"  # header or payload above its cap
R_SIZE = "size"  # payload not a whole, non-zero number of frames; or a payload on start/end
R_NONFINITE = "nonfinite"  # f32le NaN or infinity
R_UNKNOWN_STREAM = "unknown_stream"  # chunk/end for no open stream of this sender
R_DUPLICATE_STREAM = "duplicate_stream"  # start for a stream id already open
R_TOO_MANY_STREAMS = "too_many_streams"  # the daemon's max_streams are open
R_SEQ = "seq"  # chunk seq lower than the next expected (duplicate or reordered)
REJECT_REASONS = (
    R_MALFORMED,
    R_VERSION,
    R_TYPE,
    R_STREAM_ID,
    R_FORMAT,
    R_RATE,
    R_CHANNELS,
    R_OVERSIZE,
    R_SIZE,
    R_NONFINITE,
    R_UNKNOWN_STREAM,
    R_DUPLICATE_STREAM,
    R_TOO_MANY_STREAMS,
    R_SEQ,
)


class FrameError(ValueError):
    """A message that cannot be accepted; `reason` is one of REJECT_REASONS."""

    def __init__(self, reason: str, detail: str, stream_id: str = "") -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.stream_id = stream_id


def check_stream_id(stream_id: object) -> str:
    """The stream id if it is 1-64 characters of [A-Za-z0-9._-] starting alphanumeric."""
    if not isinstance(stream_id, str):
        raise FrameError(R_MALFORMED, f"stream must be a string, got {type(stream_id).__name__}")
    if not 0 < len(stream_id) <= MAX_STREAM_ID_CHARS or not STREAM_ID_PATTERN.fullmatch(stream_id):
        raise FrameError(
            R_STREAM_ID,
            f"stream id {stream_id[:MAX_STREAM_ID_CHARS]!r} must be 1-{MAX_STREAM_ID_CHARS} characters "
            "of A-Z a-z 0-9 . _ - starting with a letter or digit",
        )
    return stream_id


@dataclass(frozen=True)
class StreamStart:
    """Opens a stream: its id and the layout of every chunk's PCM."""

    TYPE: ClassVar[str] = "start"
    stream_id: str
    rate_hz: int
    channels: int
    sample_format: SampleFormat
    v: int = AUDIO_PROTOCOL_VERSION

    def __post_init__(self) -> None:
        check_stream_id(self.stream_id)
        sid = self.stream_id
        if not _is_int(self.rate_hz) or not MIN_RATE_HZ <= self.rate_hz <= MAX_RATE_HZ:
            raise FrameError(R_RATE, f"rate_hz {self.rate_hz!r} outside {MIN_RATE_HZ}-{MAX_RATE_HZ}", sid)
        if not _is_int(self.channels) or not 1 <= self.channels <= MAX_CHANNELS:
            raise FrameError(R_CHANNELS, f"channels {self.channels!r} outside 1-{MAX_CHANNELS}", sid)
        if not isinstance(self.sample_format, str) or self.sample_format not in SAMPLE_FORMATS:
            raise FrameError(
                R_FORMAT,
                f"format {str(self.sample_format)[:16]!r} is not one of {', '.join(SAMPLE_FORMATS)}",
                sid,
            )

    @property
    def bytes_per_frame(self) -> int:
        """Bytes of one interleaved frame (one sample of every channel)."""
        return SAMPLE_FORMATS[self.sample_format] * self.channels

    @property
    def max_chunk_frames(self) -> int:
        """Most frames one chunk may carry: MAX_CHUNK_S of audio, within MAX_CHUNK_BYTES."""
        return min(int(self.rate_hz * MAX_CHUNK_S), MAX_CHUNK_BYTES // self.bytes_per_frame)

    def check_payload(self, n_bytes: int) -> int:
        """Frames in a chunk payload of `n_bytes`; FrameError unless whole, non-empty and within caps."""
        if n_bytes > self.max_chunk_frames * self.bytes_per_frame:
            raise FrameError(
                R_OVERSIZE,
                f"chunk of {n_bytes} bytes exceeds {self.max_chunk_frames} frames "
                f"({self.max_chunk_frames * self.bytes_per_frame} bytes)",
                self.stream_id,
            )
        if n_bytes == 0 or n_bytes % self.bytes_per_frame:
            raise FrameError(
                R_SIZE,
                f"chunk of {n_bytes} bytes is not a whole, non-zero number of "
                f"{self.bytes_per_frame}-byte frames",
                self.stream_id,
            )
        return n_bytes // self.bytes_per_frame

    def to_frames(self) -> list[bytes]:
        """The two ZeroMQ frames of this message."""
        return _frames(
            {
                "type": self.TYPE,
                "stream": self.stream_id,
                "rate_hz": self.rate_hz,
                "channels": self.channels,
                "format": self.sample_format,
            }
        )


@dataclass(frozen=True)
class AudioChunk:
    """PCM of one stream in the layout its start declared; `seq` counts 0, 1, 2, … per stream."""

    TYPE: ClassVar[str] = "chunk"
    stream_id: str
    seq: int
    pcm: bytes
    v: int = AUDIO_PROTOCOL_VERSION

    def __post_init__(self) -> None:
        check_stream_id(self.stream_id)
        if not _is_int(self.seq) or not 0 <= self.seq <= MAX_SEQ:
            raise FrameError(R_MALFORMED, f"seq {self.seq!r} outside 0-{MAX_SEQ}", self.stream_id)
        if len(self.pcm) > MAX_CHUNK_BYTES:
            raise FrameError(
                R_OVERSIZE, f"chunk of {len(self.pcm)} bytes exceeds {MAX_CHUNK_BYTES}", self.stream_id
            )

    def to_frames(self) -> list[bytes]:
        """The two ZeroMQ frames of this message."""
        return _frames({"type": self.TYPE, "stream": self.stream_id, "seq": self.seq}, self.pcm)


@dataclass(frozen=True)
class StreamEnd:
    """Closes a stream after `chunks` chunks (seq 0..chunks-1): the daemon cuts what is in progress."""

    TYPE: ClassVar[str] = "end"
    stream_id: str
    chunks: int
    v: int = AUDIO_PROTOCOL_VERSION

    def __post_init__(self) -> None:
        check_stream_id(self.stream_id)
        if not _is_int(self.chunks) or not 0 <= self.chunks <= MAX_SEQ:
            raise FrameError(R_MALFORMED, f"chunks {self.chunks!r} outside 0-{MAX_SEQ}", self.stream_id)

    def to_frames(self) -> list[bytes]:
        """The two ZeroMQ frames of this message."""
        return _frames({"type": self.TYPE, "stream": self.stream_id, "chunks": self.chunks})


@dataclass(frozen=True)
class Ack:
    """The daemon's answer to one sender (never broadcast).

    `started`: the start was accepted. `rejected`: a message was refused (`reason`, `detail`, and
    `seq` for a chunk, else -1); other messages and streams go on. `ended`: the stream is over
    (`reason` "" after an end, "idle_timeout" when the daemon ended it) and the pipeline has taken
    its last chunk; `closed` is the daemon's running count of such streams (heartbeat stat
    `net_streams_closed`), which tells a sender when later heartbeats account for its stream.
    """

    TYPE: ClassVar[str] = "ack"
    stream_id: str
    status: AckStatus
    reason: str = ""
    detail: str = ""
    seq: int = -1
    closed: int = 0
    v: int = AUDIO_PROTOCOL_VERSION

    def to_frames(self) -> list[bytes]:
        """The two ZeroMQ frames of this message."""
        return _frames(
            {
                "type": self.TYPE,
                "stream": self.stream_id,
                "status": self.status,
                "reason": self.reason,
                "detail": self.detail[:200],
                "seq": self.seq,
                "closed": self.closed,
            }
        )


Frame = StreamStart | AudioChunk | StreamEnd
IDLE_TIMEOUT_REASON = "idle_timeout"
_ACK_STATUSES = ("started", "ended", "rejected")


def _frames(header: dict[str, Any], payload: bytes = b"") -> list[bytes]:
    return [json.dumps({"v": AUDIO_PROTOCOL_VERSION, **header}, separators=(",", ":")).encode(), payload]


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _header(frames: Sequence[bytes]) -> tuple[dict[str, Any], bytes]:
    """Split and decode `[header, payload]`; FrameError for anything else."""
    if len(frames) != 2:
        raise FrameError(R_MALFORMED, f"expected 2 frames [header, payload], got {len(frames)}")
    raw, payload = bytes(frames[0]), bytes(frames[1])
    if len(raw) > MAX_HEADER_BYTES:
        raise FrameError(R_OVERSIZE, f"header of {len(raw)} bytes exceeds {MAX_HEADER_BYTES}")
    try:
        d = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise FrameError(R_MALFORMED, f"header is not UTF-8 JSON ({e})") from None
    if not isinstance(d, dict):
        raise FrameError(R_MALFORMED, "header is not a JSON object")
    v = d.get("v")
    if not _is_int(v):
        raise FrameError(R_MALFORMED, f"missing or non-integer version {v!r}")
    if v != AUDIO_PROTOCOL_VERSION:
        raise FrameError(R_VERSION, f"version {v!r} (this end speaks {AUDIO_PROTOCOL_VERSION})")
    return d, payload


def _field(d: dict[str, Any], key: str, kind: type) -> Any:
    value = d.get(key)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise FrameError(R_MALFORMED, f"field {key!r} must be {kind.__name__}, got {value!r}"[:200])
    return value


def decode(frames: Sequence[bytes]) -> Frame:
    """Parse one sender message (any bytes): a typed frame, or FrameError with a reason."""
    d, payload = _header(frames)
    kind = d.get("type")
    sid = check_stream_id(d.get("stream"))
    if kind == AudioChunk.TYPE:
        return AudioChunk(sid, _field(d, "seq", int), payload)
    if kind not in (StreamStart.TYPE, StreamEnd.TYPE):
        raise FrameError(R_TYPE, f"unknown message type {str(kind)[:32]!r}", sid)
    if payload:
        raise FrameError(R_SIZE, f"{kind} carries a {len(payload)}-byte payload; it must be empty", sid)
    if kind == StreamEnd.TYPE:
        return StreamEnd(sid, _field(d, "chunks", int))
    fmt = d.get("format")
    if not isinstance(fmt, str):
        raise FrameError(R_FORMAT, f"format must be a string, got {fmt!r}"[:200], sid)
    return StreamStart(sid, _field(d, "rate_hz", int), _field(d, "channels", int), fmt)  # type: ignore[arg-type]


def decode_ack(frames: Sequence[bytes]) -> Ack:
    """Parse one daemon answer: an Ack, or FrameError with a reason."""
    d, _ = _header(frames)
    if d.get("type") != Ack.TYPE:
        raise FrameError(R_TYPE, f"expected an ack, got type {str(d.get('type'))[:32]!r}")
    status = _field(d, "status", str)
    if status not in _ACK_STATUSES:
        raise FrameError(R_MALFORMED, f"unknown ack status {status[:32]!r}")
    sid = _field(d, "stream", str)  # empty when the rejected message named no valid stream
    return Ack(
        sid,
        status,
        reason=_field(d, "reason", str),
        detail=_field(d, "detail", str),
        seq=_field(d, "seq", int),
        closed=_field(d, "closed", int),
    )
