"""The audio front end shared by replay, live capture and training: read, downmix, convert."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from intentd.errors import AudioFileError, IntentdError
from intentd_client.files import FileRefused, open_regular_file, shown

log = logging.getLogger(__name__)

MIN_RATE_HZ = 1000
MAX_RATE_HZ = 384_000
# One read decodes at most this many interleaved samples (4 MiB as float32), whatever the header says.
READ_BLOCK_SAMPLES = 1 << 20


@dataclass(frozen=True)
class Chunk:
    """A piece of a source's audio: float32 mono in [-1, 1] at the source's native rate."""

    samples: np.ndarray
    rate_hz: int
    start_sample: int  # index of samples[0] since the source started
    capture_time: float  # time.monotonic() when the chunk was captured or read
    source: str  # the stream's name; a source may carry several streams (network replays)
    final: bool = False  # the stream ends with this chunk: cut what is in progress

    @property
    def start_s(self) -> float:
        """Audio seconds since the source started."""
        return self.start_sample / self.rate_hz


def to_mono_float32(frames: np.ndarray) -> np.ndarray:
    """Downmix `(n,)` or `(n, channels)` audio of any numeric dtype to float32 mono in [-1, 1]."""
    a = np.asarray(frames)
    if a.dtype.kind == "i":
        scale = float(2 ** (8 * a.dtype.itemsize - 1))
        a = a.astype(np.float32) / scale
    elif a.dtype.kind == "u":
        half = float(2 ** (8 * a.dtype.itemsize - 1))
        a = (a.astype(np.float32) - half) / half
    else:
        a = a.astype(np.float32, copy=False)
    if a.ndim == 2:
        a = a.mean(axis=1, dtype=np.float32) if a.shape[1] != 1 else a[:, 0]
    elif a.ndim != 1:
        raise ValueError(f"audio must be 1-D or 2-D (frames, channels), got shape {a.shape}")
    return np.ascontiguousarray(a, dtype=np.float32)


def check_rate(rate_hz: int, what: str, error: type[IntentdError] = AudioFileError) -> None:
    """Refuse sample rates no microphone or file really has, as `error` (a file's by default)."""
    if not MIN_RATE_HZ <= rate_hz <= MAX_RATE_HZ:
        raise error(f"{what}: sample rate {rate_hz} Hz is outside {MIN_RATE_HZ}-{MAX_RATE_HZ} Hz")


def open_wav(path: str | Path) -> sf.SoundFile:
    """Open an audio file soundfile reads, with one clear error when it cannot."""
    name = shown(path)
    try:
        fd = open_regular_file(path)
    except FileRefused as e:
        raise AudioFileError(str(e)) from e
    try:
        # The descriptor, not the path, so what was checked above is what gets decoded.
        f = sf.SoundFile(fd, closefd=True)  # libsndfile closes fd itself when this fails
    except sf.LibsndfileError as e:
        raise AudioFileError(f"{name}: not a readable audio file ({e.error_string})") from e
    except (RuntimeError, OSError) as e:
        raise AudioFileError(f"{name}: not a readable audio file ({e})") from e
    if f.channels < 1:
        f.close()
        raise AudioFileError(f"{name}: has no audio channels")
    try:
        check_rate(f.samplerate, name)
    except AudioFileError:
        f.close()
        raise
    return f


def read_block(f: sf.SoundFile, frames: int, name: str, pos_s: float) -> np.ndarray:
    """Decode up to `frames` frames as float32 mono; empty at the end of the file."""
    try:
        # soundfile sizes its buffer by min(frames, the header's frame count), never the header alone.
        block = f.read(frames, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as e:
        raise AudioFileError(f"{name}: cannot decode audio at {pos_s:.2f} s ({e})") from e
    mono = to_mono_float32(block)
    if not np.all(np.isfinite(mono)):
        raise AudioFileError(f"{name}: contains NaN or infinite samples")
    return mono


def block_frames(channels: int) -> int:
    """Frames per read so that one read holds at most READ_BLOCK_SAMPLES interleaved samples."""
    return max(1, READ_BLOCK_SAMPLES // max(1, channels))


def read_wav(path: str | Path, max_s: float | None = None) -> tuple[np.ndarray, int]:
    """Read a whole audio file as float32 mono at its own rate; AudioFileError past `max_s`."""
    name = shown(path)
    blocks: list[np.ndarray] = []
    n = 0
    with open_wav(path) as f:
        rate = f.samplerate
        # A header may claim billions of frames (FLAC's STREAMINFO does, unchecked), so memory
        # follows what really decodes, a bounded block at a time, never the header's count.
        frames = block_frames(f.channels)
        max_frames = None if max_s is None else int(max_s * rate)
        while True:
            block = read_block(f, frames, name, n / rate)
            if block.size == 0:
                break
            blocks.append(block)
            n += block.size
            if max_frames is not None and n > max_frames:
                raise AudioFileError(
                    f"{name}: longer than {max_s:g} s; cut it shorter or use `intentd replay`"
                )
    if not blocks:
        return np.zeros(0, np.float32), rate
    return (blocks[0] if len(blocks) == 1 else np.concatenate(blocks)), rate
