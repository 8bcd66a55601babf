"""Audio sources for the capture thread: WAV replay and live microphone capture.

Sources are plain objects: `open()`, `read(timeout_s)`, `close()`, `stats()`. The runner's
capture thread calls them; nothing here starts a thread except PortAudio's own callback thread,
which only copies blocks into a bounded queue.
"""

from __future__ import annotations

import logging
import queue
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import soundfile as sf

from intentd.audio import (
    Chunk,
    block_frames,
    check_rate,
    open_wav,
    read_block,
    shown,
    to_mono_float32,
)
from intentd.devices import find_input_device, portaudio
from intentd.errors import AudioDeviceError

if TYPE_CHECKING:
    import sounddevice

log = logging.getLogger(__name__)

DEFAULT_WAV_CHUNK_MS = 100
DEFAULT_MIC_BLOCKSIZE_MS = 20
# 250 blocks of 20 ms: five seconds of audio may pile up before the oldest is dropped.
DEFAULT_MIC_QUEUE_MAX_CHUNKS = 250
# Sound-server and ALSA plugin devices (pulse, pipewire, plug) advertise 32-128 "virtual" input
# channels; real microphones have one or two, and an array's first two carry the speech too.
# Without an explicit channel count we open at most this many.
MAX_DEFAULT_CHANNELS = 2
# int16 is every capture device's native format and covers a microphone's real dynamic range;
# asking for it keeps ALSA plugins from converting (webrtcvad downstream wants int16 anyway).
CAPTURE_DTYPE = "int16"
# How often a blocked read() looks whether the stream died, so a lost device is reported
# within this long rather than after the caller's whole timeout.
DEVICE_CHECK_INTERVAL_S = 0.1


class EndOfStream(Exception):
    """A finite source (a WAV file) has delivered all of its audio."""


class Source(Protocol):
    """What the runner's capture thread reads audio from."""

    name: str
    rate_hz: int
    # Chunks come at the pace of speech (a device, the network, a paced file): nothing may wait for
    # the model. False for a file read as fast as it goes (vad.Segmenter's wait_for_verdicts).
    realtime: bool

    def open(self) -> None:
        """Start delivering audio; `rate_hz` is valid afterwards."""

    def read(self, timeout_s: float) -> Chunk | None:
        """The next chunk, None if none came within `timeout_s`; EndOfStream when done."""

    def close(self) -> None:
        """Release the file or device; safe to call twice."""

    def stats(self) -> dict[str, int]:
        """Counters for logs and `intentd info`."""


class WavSource:
    """Replays an audio file in chunks, as fast as it is read or paced at real time."""

    def __init__(
        self, path: str | Path, realtime: bool = False, chunk_ms: float = DEFAULT_WAV_CHUNK_MS
    ) -> None:
        if chunk_ms <= 0:
            raise ValueError(f"chunk_ms must be positive, got {chunk_ms}")
        self.path = Path(path)
        self.name = f"wav:{self.path}"
        self._shown = shown(self.path)  # for one-line errors
        self.rate_hz = 0
        self.realtime = realtime
        self.chunk_ms = chunk_ms
        self._file: sf.SoundFile | None = None
        self._frames_per_chunk = 0
        self._pos = 0  # frames delivered so far
        self._chunks = 0
        self._opened_at = 0.0
        self._pending: np.ndarray | None = None  # read from the file but not yet due
        self._ended = False

    def open(self) -> None:
        """Open the file; raises AudioFileError with one line when it cannot be read."""
        self.close()
        self._file = open_wav(self.path)
        self.rate_hz = self._file.samplerate
        self._frames_per_chunk = max(
            1, min(round(self.rate_hz * self.chunk_ms / 1000), block_frames(self._file.channels))
        )
        self._pos = 0
        self._chunks = 0
        self._pending = None
        self._ended = False
        self._opened_at = time.monotonic()
        log.info(
            "replaying %s: %d Hz, %d channels, %s",
            self.path,
            self.rate_hz,
            self._file.channels,
            "real time" if self.realtime else "as fast as read",
        )

    def read(self, timeout_s: float) -> Chunk | None:
        """The next chunk; None if (in real time) it is not due within `timeout_s`."""
        if self._file is None:
            raise RuntimeError(f"{self.name}: read() before open()")
        if self._pending is None:
            self._pending = self._read_block()
        if self._pending is None:
            raise EndOfStream(self.name)
        if self.realtime:
            # A microphone delivers a chunk once its last sample has been spoken.
            due = self._opened_at + (self._pos + len(self._pending)) / self.rate_hz
            wait_s = due - time.monotonic()
            if wait_s > timeout_s:
                time.sleep(max(timeout_s, 0.0))
                return None
            if wait_s > 0:
                time.sleep(wait_s)
        samples, self._pending = self._pending, None
        chunk = Chunk(samples, self.rate_hz, self._pos, time.monotonic(), self.name)
        self._pos += len(samples)
        self._chunks += 1
        return chunk

    def _read_block(self) -> np.ndarray | None:
        """Decode the next block as float32 mono; None at the end of the file."""
        assert self._file is not None
        if self._ended:
            return None
        # The header's frame count may lie, so the end is where decoding returns nothing.
        mono = read_block(self._file, self._frames_per_chunk, self._shown, self._pos / self.rate_hz)
        if mono.size == 0:
            self._ended = True
            log.info("%s: end of file after %d samples", self.path, self._pos)
            return None
        return mono

    def close(self) -> None:
        """Close the file."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def stats(self) -> dict[str, int]:
        """Frames and chunks delivered so far."""
        return {"frames_captured": self._pos, "chunks": self._chunks}


class MicSource:
    """Live capture from a PortAudio input device, at its native rate and channel count."""

    def __init__(
        self,
        device: str | int | None = None,
        rate_hz: int | None = None,
        channels: int | None = None,
        blocksize_ms: float = DEFAULT_MIC_BLOCKSIZE_MS,
        queue_max_chunks: int = DEFAULT_MIC_QUEUE_MAX_CHUNKS,
    ) -> None:
        if blocksize_ms <= 0:
            raise ValueError(f"blocksize_ms must be positive, got {blocksize_ms}")
        if queue_max_chunks < 1:
            raise ValueError(f"queue_max_chunks must be at least 1, got {queue_max_chunks}")
        self.device = device
        self.name = f"mic:{'default' if device is None else device}"
        self.realtime = True
        self.rate_hz = rate_hz or 0
        self.channels = channels or 0
        self.device_name = ""  # PortAudio's full name, once open
        self._requested_rate_hz = rate_hz
        self._requested_channels = channels
        self.blocksize_ms = blocksize_ms
        self._queue: queue.Queue[tuple[int, np.ndarray, float]] = queue.Queue(queue_max_chunks)
        self._sd: Any = None
        self._stream: sounddevice.InputStream | None = None
        self._closing = False
        self._rescan = False  # after a loss, PortAudio must list devices afresh (a replugged USB mic)
        self._finished = False  # set from PortAudio's thread when the stream stops
        self._callback_error: BaseException | None = None
        self._frames_captured = 0
        self._input_overflows = 0
        self._queue_drops = 0

    def open(self) -> None:
        """Find the device and start the stream; AudioDeviceError with one line if impossible."""
        self.close()
        self._sd = sd = portaudio()
        if self._rescan:
            # Only safe with no stream open; the daemon has one microphone and just closed it.
            sd._terminate()
            sd._initialize()
            self._rescan = False
        dev = find_input_device(self.device)
        rate_hz = self._requested_rate_hz or round(dev.default_rate_hz)
        check_rate(rate_hz, self.name, AudioDeviceError)
        default_channels = max(1, min(dev.max_input_channels, MAX_DEFAULT_CHANNELS))
        channels = self._requested_channels or default_channels
        self._queue = queue.Queue(self._queue.maxsize)
        self._closing = False
        self._finished = False
        self._callback_error = None
        # Counters and the timeline run on across a reopen: start_sample stays monotonic (the gap
        # shows in it) and Prometheus totals never reset.
        try:
            stream = sd.InputStream(
                device=dev.index,
                samplerate=rate_hz,
                channels=channels,
                dtype=CAPTURE_DTYPE,
                blocksize=max(1, round(rate_hz * self.blocksize_ms / 1000)),
                callback=self._callback,
                finished_callback=self._on_finished,
            )
        except (sd.PortAudioError, ValueError) as e:
            raise AudioDeviceError(
                f"{self.name}: cannot open [{dev.index}] {dev.name} at {rate_hz} Hz, "
                f"{channels} channels ({e}); try another --rate or channel count"
            ) from e
        try:
            stream.start()
        except sd.PortAudioError as e:
            stream.close(ignore_errors=True)
            raise AudioDeviceError(f"{self.name}: cannot start [{dev.index}] {dev.name} ({e})") from e
        self._stream = stream
        self.rate_hz = round(stream.samplerate)
        self.channels = channels
        self.device_name = dev.name
        log.info("capturing from [%d] %s: %d Hz, %d ch", dev.index, dev.name, rate_hz, channels)

    def _callback(self, indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        """PortAudio's thread: copy the block into the queue and count trouble, nothing else."""
        try:
            if status.input_overflow:
                self._input_overflows += 1
            item = (self._frames_captured, indata.copy(), time.monotonic())
            self._frames_captured += frames
            try:
                self._queue.put_nowait(item)
            except queue.Full:
                # Overflow policy: drop the oldest block and keep the newest, so a stalled
                # consumer resumes on live audio; the gap shows in start_sample and is counted.
                try:
                    self._queue.get_nowait()
                    self._queue_drops += 1
                except queue.Empty:
                    pass
                try:
                    self._queue.put_nowait(item)
                except queue.Full:
                    self._queue_drops += 1
        except Exception as e:
            self._callback_error = e
            raise self._sd.CallbackAbort from e

    def _on_finished(self) -> None:
        """PortAudio's thread: the stream stopped, by close() or by itself."""
        self._finished = True

    @property
    def device_lost(self) -> bool:
        """True when the stream stopped without close(): unplugged device or driver failure."""
        if self._stream is None or self._closing:
            return False
        if self._finished or self._callback_error is not None:
            return True
        try:
            return not self._stream.active
        except self._sd.PortAudioError:  # PortAudio itself was shut down under the stream
            return True

    def read(self, timeout_s: float) -> Chunk | None:
        """The next captured block as float32 mono; None on timeout; AudioDeviceError if lost."""
        if self._stream is None:
            raise RuntimeError(f"{self.name}: read() before open()")
        deadline = time.monotonic() + timeout_s
        while True:
            wait_s = min(DEVICE_CHECK_INTERVAL_S, deadline - time.monotonic())
            try:
                start, frames, captured_at = self._queue.get(timeout=max(wait_s, 0.0))
            except queue.Empty:
                # Blocks already captured are delivered before a lost device is reported.
                if self.device_lost:
                    raise AudioDeviceError(self._lost_message()) from self._callback_error
                if time.monotonic() >= deadline:
                    return None
                continue
            return Chunk(to_mono_float32(frames), self.rate_hz, start, captured_at, self.name)

    def _lost_message(self) -> str:
        """One line saying the device stopped and what to do."""
        why = f" ({self._callback_error!r})" if self._callback_error else ""
        return (
            f"{self.name}: capture from {self.device_name} stopped unexpectedly{why}; "
            "check that the device is still connected, then restart"
        )

    def close(self) -> None:
        """Stop and close the stream."""
        if self.device_lost:
            self._rescan = True
        stream, self._stream = self._stream, None
        if stream is None:
            return
        self._closing = True
        stream.abort(ignore_errors=True)
        stream.close(ignore_errors=True)
        log.info("closed %s after %d frames", self.name, self._frames_captured)

    def stats(self) -> dict[str, int]:
        """Frames captured, PortAudio input overflows, blocks dropped from the full queue."""
        return {
            "frames_captured": self._frames_captured,
            "input_overflows": self._input_overflows,
            "queue_drops": self._queue_drops,
            "queue_depth": self._queue.qsize(),
        }
