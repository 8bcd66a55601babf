"""The network source: PCM streams sent in by `intentd send` (or any DEALER) over ZeroMQ.

A plain object like the other sources: one ROUTER socket, polled by the runner's audio thread
through `read()`; no threads inside. Each stream (`start` … `end`, see clients/AUDIO_PROTOCOL.md)
becomes chunks with `source="net:<stream id>"` on its own timeline, and a final chunk at its end.
Bad messages are refused, counted and answered with a `rejected` ack; they never touch the
other streams. The socket's receive queue is the source's bounded queue: when it is full,
ZeroMQ stops reading from the senders (back-pressure), so nothing sent is dropped.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import zmq

from intentd.audio import Chunk, to_mono_float32
from intentd.security import CurveServer, bind_checked
from intentd_client.audio_protocol import (
    IDLE_TIMEOUT_REASON,
    MAX_CHUNK_BYTES,
    MAX_HEADER_BYTES,
    R_DUPLICATE_STREAM,
    R_NONFINITE,
    R_SEQ,
    R_TOO_MANY_STREAMS,
    R_UNKNOWN_STREAM,
    REJECT_REASONS,
    Ack,
    AudioChunk,
    FrameError,
    StreamEnd,
    StreamStart,
    decode,
)

log = logging.getLogger(__name__)

DEFAULT_QUEUE_MAX_CHUNKS = 250
DEFAULT_MAX_STREAMS = 8
DEFAULT_IDLE_TIMEOUT_S = 10.0
# A stream silent for idle_timeout_s ends within this much longer (a tenth of it where shorter).
MAX_IDLE_SCAN_S = 1.0
# Frames between the protocol caps and this are refused and counted as `oversize`; a larger one
# makes ZeroMQ drop the sender's connection before it is ever read (not counted here).
MAX_MESSAGE_BYTES = 2 * (MAX_CHUNK_BYTES + MAX_HEADER_BYTES)
# Acks queued per sender; past it a sender that does not read loses acks (never blocks us).
ACK_SNDHWM_MESSAGES = 1000
# At most one warning per rejection reason per this long; the rest are counted, not logged.
REJECT_LOG_INTERVAL_S = 5.0
S24_SIGN_SHIFT = 8  # 24-bit samples are placed in the top of an int32 to carry the sign


@dataclass
class _Stream:
    """What the source knows of one open stream."""

    start: StreamStart
    peer: bytes  # ROUTER identity of the sender; only it may send into the stream
    source: str
    next_sample: int = 0
    next_seq: int = 0
    last_seen: float = 0.0


def pcm_to_mono(pcm: bytes, start: StreamStart) -> np.ndarray:
    """Decode interleaved little-endian PCM in the stream's format to float32 mono."""
    if start.sample_format == "s16le":
        frames = np.frombuffer(pcm, "<i2")
    elif start.sample_format == "f32le":
        frames = np.frombuffer(pcm, "<f4")
    else:  # s24le: three bytes per sample, widened to int32 with the sign in the top byte
        b = np.frombuffer(pcm, np.uint8).reshape(-1, 3).astype(np.int32)
        frames = (b[:, 0] << 8) | (b[:, 1] << 16) | (b[:, 2] << 24)
    return to_mono_float32(frames.reshape(-1, start.channels))


class NetSource:
    """Binds a ZeroMQ ROUTER and turns the PCM streams sent to it into chunks, one timeline each."""

    def __init__(
        self,
        endpoint: str,
        queue_max_chunks: int = DEFAULT_QUEUE_MAX_CHUNKS,
        max_streams: int = DEFAULT_MAX_STREAMS,
        idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S,
        context: zmq.Context | None = None,
        curve: CurveServer | None = None,
    ) -> None:
        if queue_max_chunks < 1:
            raise ValueError(f"queue_max_chunks must be at least 1, got {queue_max_chunks}")
        if max_streams < 1:
            raise ValueError(f"max_streams must be at least 1, got {max_streams}")
        if not idle_timeout_s > 0:
            raise ValueError(f"idle_timeout_s must be positive, got {idle_timeout_s}")
        self.endpoint = endpoint
        self.name = f"net:{endpoint}"
        self.realtime = True  # streams come at the pace they are sent; none waits for the model
        self.rate_hz = 0  # every stream has its own rate, carried by its chunks
        self.queue_max_chunks = queue_max_chunks
        self.max_streams = max_streams
        self.idle_timeout_s = idle_timeout_s
        self._context = context
        self._curve = curve  # running CURVE server for exposed endpoints (see intentd.security)
        self._socket: zmq.Socket | None = None
        self._poller = zmq.Poller()  # kept: pyzmq's Socket.poll builds a new one on every call
        # Streams are checked for idleness this often, not on every read: the scan is over all
        # open streams, and the audio thread's every microsecond is held under the GIL.
        self._idle_scan_s = min(MAX_IDLE_SCAN_S, idle_timeout_s / 10)
        self._next_idle_scan = 0.0
        self._streams: dict[str, _Stream] = {}
        # Ended streams whose final chunk the runner holds; acked on the next read(), i.e. once
        # the runner has cut and queued their last segments.
        self._handed_over: list[tuple[_Stream, str]] = []
        self._last_logged: dict[str, float] = {}
        self._suppressed: dict[str, int] = dict.fromkeys(REJECT_REASONS, 0)
        # All keys exist from the start: stats() is read from another thread while this one counts.
        self._stats: dict[str, int] = dict.fromkeys(
            (
                "net_frames_received",
                "net_frames_rejected",
                *(f"net_rejected_{r}" for r in REJECT_REASONS),
                "net_streams_started",
                "net_streams_ended",
                "net_streams_idle_ended",
                "net_streams_closed",
                "net_streams_open",
                "net_chunks",
                "net_samples",
                "net_seq_gaps",
            ),
            0,
        )

    def open(self) -> None:
        """Bind the endpoint; ConfigError with one line when it cannot be bound."""
        self.close()
        ctx = self._context or zmq.Context.instance()
        sock = ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, self.queue_max_chunks)
        sock.setsockopt(zmq.SNDHWM, ACK_SNDHWM_MESSAGES)
        bind_checked(
            sock,
            self.endpoint,
            "network source endpoint",
            "--source net:ENDPOINT",
            MAX_MESSAGE_BYTES,
            self._curve,
        )
        self._socket = sock
        self._poller.register(sock, zmq.POLLIN)
        log.info("taking audio streams on %s (at most %d at once)", self.endpoint, self.max_streams)

    def read(self, timeout_s: float) -> Chunk | None:
        """The next chunk of any stream; None if none came within `timeout_s`. Never EndOfStream."""
        if self._socket is None:
            raise RuntimeError(f"{self.name}: read() before open()")
        self._ack_handed_over()
        now = time.monotonic()
        if now >= self._next_idle_scan:
            chunk = self._end_idle(now)
            if chunk is not None:  # scan again on the next read: another may be idle too
                return chunk
            self._next_idle_scan = now + self._idle_scan_s
        deadline = now + timeout_s
        while True:
            wait_ms = max(0, round((deadline - time.monotonic()) * 1000))
            if not self._poller.poll(wait_ms):
                return None
            frames = self._socket.recv_multipart(zmq.NOBLOCK, copy=True)
            chunk = self._handle(frames[0], frames[1:], time.monotonic())
            if chunk is not None:
                return chunk
            if time.monotonic() >= deadline:
                return None

    def close(self) -> None:
        """Unbind; streams still open are forgotten (the runner cuts their segments)."""
        if self._socket is not None:
            self._poller.unregister(self._socket)
            self._socket.close(linger=0)
            self._socket = None
        self._streams.clear()
        self._handed_over.clear()
        self._stats["net_streams_open"] = 0

    def stats(self) -> dict[str, int]:
        """Frames received and rejected (also by reason), streams started/ended/open, chunks, samples."""
        return dict(self._stats)

    # --- one message ----------------------------------------------------------------------------
    def _handle(self, peer: bytes, frames: list[bytes], now: float) -> Chunk | None:
        self._stats["net_frames_received"] += 1
        frame: StreamStart | AudioChunk | StreamEnd | None = None
        try:
            frame = decode(frames)
            if isinstance(frame, StreamStart):
                self._start(peer, frame, now)
                return None
            stream = self._streams.get(frame.stream_id)
            if stream is None or stream.peer != peer:
                raise FrameError(R_UNKNOWN_STREAM, "no such open stream from this sender", frame.stream_id)
            stream.last_seen = now
            if isinstance(frame, StreamEnd):
                return self._end(stream, frame, now)
            return self._chunk(stream, frame, now)
        except FrameError as e:
            self._reject(peer, e, len(frames), frame.seq if isinstance(frame, AudioChunk) else -1)
            return None

    def _start(self, peer: bytes, start: StreamStart, now: float) -> None:
        sid = start.stream_id
        if sid in self._streams:
            raise FrameError(R_DUPLICATE_STREAM, "a stream with this id is open", sid)
        if len(self._streams) >= self.max_streams:
            raise FrameError(R_TOO_MANY_STREAMS, f"{self.max_streams} streams are open", sid)
        self._streams[sid] = _Stream(start, peer, f"net:{sid}", last_seen=now)
        self._stats["net_streams_started"] += 1
        self._stats["net_streams_open"] = len(self._streams)
        self._send(peer, Ack(sid, "started"))
        log.info(
            "stream %s started: %d Hz, %d ch, %s", sid, start.rate_hz, start.channels, start.sample_format
        )

    def _chunk(self, stream: _Stream, chunk: AudioChunk, now: float) -> Chunk:
        sid = stream.start.stream_id
        if chunk.seq < stream.next_seq:
            raise FrameError(R_SEQ, f"seq {chunk.seq} after {stream.next_seq - 1}", sid)
        if chunk.seq > stream.next_seq:
            # Chunks never sent or refused above the protocol (a dropped connection): the
            # timeline cannot know their length, so it just goes on.
            self._stats["net_seq_gaps"] += 1
            log.warning("stream %s: chunks %d-%d missing", sid, stream.next_seq, chunk.seq - 1)
        stream.next_seq = chunk.seq + 1
        stream.start.check_payload(len(chunk.pcm))
        samples = pcm_to_mono(chunk.pcm, stream.start)
        if not np.all(np.isfinite(samples)):
            raise FrameError(R_NONFINITE, f"chunk {chunk.seq} holds NaN or infinite samples", sid)
        out = Chunk(samples, stream.start.rate_hz, stream.next_sample, now, stream.source)
        stream.next_sample += len(samples)
        self._stats["net_chunks"] += 1
        self._stats["net_samples"] += len(samples)
        return out

    def _end(self, stream: _Stream, end: StreamEnd, now: float) -> Chunk:
        if end.chunks != stream.next_seq:
            self._stats["net_seq_gaps"] += 1
            log.warning(
                "stream %s: ended after %d chunks, %d arrived", end.stream_id, end.chunks, stream.next_seq
            )
        self._stats["net_streams_ended"] += 1
        log.info(
            "stream %s ended: %.2f s of audio",
            end.stream_id,
            stream.next_sample / stream.start.rate_hz,
        )
        return self._final(stream, "", now)

    def _end_idle(self, now: float) -> Chunk | None:
        """End one stream silent for idle_timeout_s, if any: its final chunk."""
        for stream in self._streams.values():
            if now - stream.last_seen >= self.idle_timeout_s:
                self._stats["net_streams_idle_ended"] += 1
                log.warning(
                    "stream %s: nothing for %.0f s, ended", stream.start.stream_id, self.idle_timeout_s
                )
                return self._final(stream, IDLE_TIMEOUT_REASON, now)
        return None

    def _final(self, stream: _Stream, reason: str, now: float) -> Chunk:
        del self._streams[stream.start.stream_id]
        self._stats["net_streams_open"] = len(self._streams)
        self._handed_over.append((stream, reason))
        empty = np.zeros(0, np.float32)
        return Chunk(empty, stream.start.rate_hz, stream.next_sample, now, stream.source, final=True)

    def _ack_handed_over(self) -> None:
        """The runner asks for more, so it has cut the last segments of the streams ended before."""
        for stream, reason in self._handed_over:
            self._stats["net_streams_closed"] += 1
            closed = self._stats["net_streams_closed"]
            self._send(stream.peer, Ack(stream.start.stream_id, "ended", reason=reason, closed=closed))
        self._handed_over.clear()

    def _reject(self, peer: bytes, e: FrameError, n_frames: int, seq: int) -> None:
        self._stats["net_frames_rejected"] += 1
        self._stats[f"net_rejected_{e.reason}"] += 1
        self._send(peer, Ack(e.stream_id, "rejected", reason=e.reason, detail=e.detail, seq=seq))
        now = time.monotonic()
        if now - self._last_logged.get(e.reason, -REJECT_LOG_INTERVAL_S) < REJECT_LOG_INTERVAL_S:
            self._suppressed[e.reason] += 1
            return
        self._last_logged[e.reason] = now
        more = self._suppressed[e.reason]
        self._suppressed[e.reason] = 0
        log.warning(
            "refused a message%s (%d frame(s)): %s%s",
            f" of stream {e.stream_id}" if e.stream_id else "",
            n_frames,
            e,
            f" (and {more} more like it since the last report)" if more else "",
        )

    def _send(self, peer: bytes, ack: Ack) -> None:
        """Answer one sender; never blocks (a gone or slow sender's acks are dropped by ZeroMQ)."""
        assert self._socket is not None
        try:
            self._socket.send_multipart([peer, *ack.to_frames()], zmq.NOBLOCK)
        except zmq.Again:
            log.debug("ack for %s dropped: sender not reading", ack.stream_id)
