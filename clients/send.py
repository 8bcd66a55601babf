"""`intentd send`: stream audio files into a running daemon's network source, one stream each.

Each file becomes a stream `send-<hex>` (its events carry `source="net:send-<hex>"`), announced
on stderr. With `--wait EVENTS_ENDPOINT` the intent events of those streams are printed to
stdout as the daemon published them (one JSON line each), and the command exits once the
daemon has certainly published the last of them (see AUDIO_PROTOCOL.md, "Knowing the last
event"). Needs numpy and soundfile (the daemon extra) besides pyzmq; they load lazily.
"""

from __future__ import annotations

import argparse
import logging
import secrets
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, TextIO

import zmq

from intentd_client.audio_protocol import (
    MAX_CHUNK_S,
    MAX_RATE_HZ,
    MIN_RATE_HZ,
    Ack,
    AudioChunk,
    FrameError,
    StreamEnd,
    StreamStart,
    decode_ack,
)
from intentd_client.files import FileRefused, open_regular_file, shown
from intentd_client.keys import ClientKeys, KeyFileError, add_key_arguments, keys_from_args
from intentd_client.protocol import Heartbeat, IntentEvent
from intentd_client.subscriber import Restart, Subscriber

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILED = 2
DEFAULT_TIMEOUT_S = 30.0
DEFAULT_CHUNK_MS = 100.0
# Subtypes soundfile decodes exactly into int16; everything else is sent as float32, which
# holds 24-bit PCM exactly.
INT16_SUBTYPES = frozenset({"PCM_16", "PCM_S8", "PCM_U8", "ULAW", "ALAW", "IMA_ADPCM", "MS_ADPCM", "GSM610"})
# Heartbeat counters that say every segment cut so far has been published or has failed.
STAT_SEGMENTS = "segments"
STAT_EVENTS = "events"
STAT_FAILED = "segments_failed"
STAT_CLOSED = "net_streams_closed"


class SendError(Exception):
    """One file or stream that could not be sent; the message is one line naming it."""


class DecodeError(SendError):
    """A file that stopped decoding part-way; what was sent before still counts."""


@dataclass
class Stream:
    """One file on its way: its stream id, what the daemon answered, when it is accounted for."""

    path: str
    stream_id: str
    rejections: list[Ack] = field(default_factory=list)
    closed: int = 0  # the daemon's net_streams_closed once this stream was closed; 0: not yet
    closed_seen_in: tuple[str, int] | None = None  # (run_id, seq) of the first heartbeat counting it
    done: bool = False

    @property
    def source(self) -> str:
        """The `source` of this stream's intent events."""
        return f"net:{self.stream_id}"


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the `send` subcommand to the intentd CLI; it sets `func=run`."""
    p = subparsers.add_parser(
        "send",
        help="stream audio files into a running daemon (its `--source net:ENDPOINT`)",
        description="Stream audio files into a running daemon, one stream per file; "
        "with --wait, print the intent events they produced.",
    )
    add_arguments(p)
    p.set_defaults(func=run)
    return p


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add the send options to a parser."""
    p.add_argument("wavs", nargs="+", metavar="WAV", help="audio files (any rate, channels, format)")
    p.add_argument("--to", required=True, metavar="ENDPOINT", help="the daemon's net: endpoint")
    p.add_argument("--realtime", action="store_true", help="pace each file at real time")
    p.add_argument(
        "--wait",
        metavar="EVENTS_ENDPOINT",
        help="the daemon's publish endpoint: print the events of the sent streams, then exit",
    )
    p.add_argument(
        "--timeout",
        type=_positive,
        default=DEFAULT_TIMEOUT_S,
        metavar="S",
        help=f"give up after S seconds without an answer the daemon owes (default {DEFAULT_TIMEOUT_S:g})",
    )
    p.add_argument(
        "--chunk-ms",
        type=_chunk_ms,
        default=DEFAULT_CHUNK_MS,
        metavar="N",
        help=f"audio per message, 1-{MAX_CHUNK_S * 1000:g} ms (default {DEFAULT_CHUNK_MS:g})",
    )
    add_key_arguments(p)


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _chunk_ms(text: str) -> float:
    value = float(text)
    if not 1 <= value <= MAX_CHUNK_S * 1000:
        raise argparse.ArgumentTypeError(f"must be within 1-{MAX_CHUNK_S * 1000:g} ms, got {text}")
    return value


def _soundfile() -> Any:
    try:
        import numpy  # noqa: F401  (soundfile needs it; say so before it fails less clearly)
        import soundfile
    except ImportError as e:
        raise SendError(
            f"intentd send needs numpy and soundfile to read audio files ({e}); "
            "install them (pip install 'intentd[daemon]')"
        ) from None
    return soundfile


class Sender:
    """Owns the DEALER socket to the daemon's network source; sends one stream at a time."""

    def __init__(
        self, endpoint: str, timeout_s: float, context: zmq.Context, keys: ClientKeys | None = None
    ) -> None:
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self.streams: dict[str, Stream] = {}
        self.sock = context.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        # Queue only to a connected daemon, so a missing one shows as a send timeout.
        self.sock.setsockopt(zmq.IMMEDIATE, 1)
        if keys is not None:
            keys.apply(self.sock)
        try:
            self.sock.connect(endpoint)
        except zmq.ZMQError as e:
            self.sock.close(linger=0)
            raise SendError(
                f"cannot connect to {endpoint!r}: {e} (use tcp://HOST:PORT or ipc://PATH)"
            ) from None
        self.malformed_acks = 0

    def close(self) -> None:
        """Close the socket."""
        self.sock.close(linger=0)

    def send_file(self, path: str, realtime: bool, chunk_ms: float) -> Stream:
        """Stream one file: start, chunks read block by block, end; returns once the daemon closed it."""
        sf = _soundfile()
        try:
            fd = open_regular_file(path)
        except FileRefused as e:
            raise SendError(str(e)) from None
        try:
            f = sf.SoundFile(fd, closefd=True)  # libsndfile closes fd itself when this fails
        except (sf.LibsndfileError, RuntimeError, OSError) as e:
            raise SendError(f"{path}: not a readable audio file ({e})") from None
        with f:
            if not MIN_RATE_HZ <= f.samplerate <= MAX_RATE_HZ:
                raise SendError(
                    f"{path}: sample rate {f.samplerate} Hz is outside {MIN_RATE_HZ}-{MAX_RATE_HZ} Hz"
                )
            is_int16 = f.subtype in INT16_SUBTYPES
            try:
                start = StreamStart(
                    f"send-{secrets.token_hex(6)}", f.samplerate, f.channels, "s16le" if is_int16 else "f32le"
                )
            except FrameError as e:
                raise SendError(f"{path}: cannot be sent ({e})") from None
            stream = self.streams[start.stream_id] = Stream(path, start.stream_id)
            self._send(start.to_frames(), stream)
            ack = self._await(stream, ("started", "rejected"))
            if ack.status == "rejected":
                raise SendError(
                    f"{path}: daemon refused stream {stream.stream_id}: {ack.reason}: {ack.detail}"
                )
            print(
                f"intentd send: {path} -> stream {stream.stream_id} "
                f"({f.samplerate} Hz, {f.channels} ch, {start.sample_format})",
                file=sys.stderr,
                flush=True,
            )
            frames = max(1, min(round(f.samplerate * chunk_ms / 1000), start.max_chunk_frames))
            seq = 0
            began = time.monotonic()
            sent_frames = 0
            try:
                for block in _blocks(f, frames, "int16" if is_int16 else "float32", path):
                    if realtime:
                        # Like a microphone: a chunk leaves once its last sample has been spoken.
                        time.sleep(
                            max(0.0, began + (sent_frames + len(block)) / f.samplerate - time.monotonic())
                        )
                    pcm = block.astype("<i2" if is_int16 else "<f4", copy=False).tobytes()
                    self._send(AudioChunk(stream.stream_id, seq, pcm).to_frames(), stream)
                    seq += 1
                    sent_frames += len(block)
                    self._drain_acks()
            except DecodeError:
                # The daemon still classifies what it was sent so far.
                self._send(StreamEnd(stream.stream_id, seq).to_frames(), stream)
                raise
            self._send(StreamEnd(stream.stream_id, seq).to_frames(), stream)
            ack = self._await(stream, ("ended",))
            stream.closed = ack.closed
            if stream.rejections:
                first = stream.rejections[0]
                raise SendError(
                    f"{path}: daemon refused {len(stream.rejections)} message(s) of stream "
                    f"{stream.stream_id}, first: {first.reason}: {first.detail}"
                )
        return stream

    def _send(self, frames: list[bytes], stream: Stream) -> None:
        if not self.sock.poll(round(self.timeout_s * 1000), zmq.POLLOUT):
            raise SendError(
                f"{stream.path}: no daemon took audio at {self.endpoint} within {self.timeout_s:g} s "
                "(is it running with --source net:ENDPOINT?)"
            )
        self.sock.send_multipart(frames)

    def _drain_acks(self) -> None:
        while self.sock.poll(0, zmq.POLLIN):
            self._route(self.sock.recv_multipart())

    def _route(self, frames: list[bytes]) -> Ack | None:
        try:
            ack = decode_ack(frames)
        except FrameError as e:
            self.malformed_acks += 1
            log.warning("skipped a malformed answer from the daemon: %s", e)
            return None
        stream = self.streams.get(ack.stream_id)
        if stream is None:
            log.warning("daemon answered %s for no stream of ours: %s %s", ack.status, ack.reason, ack.detail)
        elif ack.status == "rejected":
            stream.rejections.append(ack)
        return ack

    def _await(self, stream: Stream, statuses: tuple[str, ...]) -> Ack:
        deadline = time.monotonic() + self.timeout_s
        while (left := deadline - time.monotonic()) > 0:
            if not self.sock.poll(round(left * 1000), zmq.POLLIN):
                break
            ack = self._route(self.sock.recv_multipart())
            if ack is not None and ack.stream_id == stream.stream_id and ack.status in statuses:
                return ack
        raise SendError(
            f"{stream.path}: no {'/'.join(statuses)} answer for stream {stream.stream_id} "
            f"from {self.endpoint} within {self.timeout_s:g} s"
        )


def _blocks(f: Any, frames: int, dtype: str, path: str) -> Iterator[Any]:
    """The file's frames in blocks of `frames`, (n, channels), decoded one block at a time."""
    sf = _soundfile()
    while True:
        try:
            block = f.read(frames, dtype=dtype, always_2d=True)
        except (sf.LibsndfileError, RuntimeError) as e:
            raise DecodeError(f"{path}: cannot decode audio ({e})") from None
        if len(block) == 0:
            return
        yield block


def _idle(stats: dict[str, float]) -> bool:
    """Every segment the daemon has cut is published (or failed)."""
    return stats.get(STAT_EVENTS, 0) + stats.get(STAT_FAILED, 0) >= stats.get(STAT_SEGMENTS, 0)


def wait_for_events(sub: Subscriber, streams: list[Stream], timeout_s: float, out: TextIO) -> list[Stream]:
    """Print the events of `streams` until each is accounted for; returns those that were not."""
    by_source = {s.source: s for s in streams}
    pending = [s for s in streams if not s.done]
    deadline = time.monotonic() + timeout_s
    while pending and (left := deadline - time.monotonic()) > 0:
        item = sub.recv(left)
        if isinstance(item, IntentEvent):
            if item.source in by_source:
                print(item.to_json(), file=out, flush=True)
        elif isinstance(item, Restart):
            print(f"intentd send: daemon restarted ({item.describe()}); events are lost", file=sys.stderr)
            return pending
        elif isinstance(item, Heartbeat):
            for s in pending:
                if s.closed_seen_in is None:
                    if item.stats.get(STAT_CLOSED, 0) >= s.closed:
                        s.closed_seen_in = (item.run_id, item.seq)
                elif item.seq > s.closed_seen_in[1] and _idle(item.stats):
                    s.done = True
            pending = [s for s in pending if not s.done]
    return pending


def run(args: argparse.Namespace, stdout: TextIO | None = None) -> int:
    """Send every file, print the events with --wait; returns the exit status."""
    out = stdout if stdout is not None else sys.stdout
    ctx = zmq.Context.instance()
    failed = False
    sub: Subscriber | None = None
    try:
        try:
            # One key pair for both endpoints: the daemon has one server key for all its sockets.
            keys = keys_from_args(args)
        except KeyFileError as e:
            raise SendError(str(e)) from None
        if args.wait:
            try:
                sub = Subscriber(args.wait, heartbeats=True, context=ctx, keys=keys)
            except zmq.ZMQError as e:
                raise SendError(f"cannot subscribe to {args.wait!r}: {e}") from None
            # Subscribed before anything is sent, and live once a heartbeat came (slow joiner).
            if not sub.wait_ready(args.timeout):
                raise SendError(
                    f"no heartbeat from {args.wait} within {args.timeout:g} s; is the daemon running?"
                )
        sender = Sender(args.to, args.timeout, ctx, keys)
        try:
            sent: list[Stream] = []
            for path in args.wavs:
                try:
                    sent.append(sender.send_file(path, args.realtime, args.chunk_ms))
                except SendError as e:
                    print(f"intentd send: {shown(str(e))}", file=sys.stderr, flush=True)
                    failed = True
                    # A stream that ended despite refused chunks still has events to wait for.
                    sent.extend(s for s in sender.streams.values() if s.path == path and s.closed)
        finally:
            sender.close()
        if sub is not None and sent:
            for s in wait_for_events(sub, sent, args.timeout, out):
                print(
                    f"intentd send: {s.path}: stream {s.stream_id} not accounted for within "
                    f"{args.timeout:g} s (daemon busy or stopped)",
                    file=sys.stderr,
                )
                failed = True
    except SendError as e:
        print(f"intentd send: {shown(str(e))}", file=sys.stderr, flush=True)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130
    finally:
        if sub is not None:
            sub.close()
    return EXIT_FAILED if failed else EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m intentd_client.send`."""
    parser = argparse.ArgumentParser(prog="intentd send", description=__doc__)
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
