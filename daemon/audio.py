"""The audio front end shared by replay, live capture and training: read, downmix, convert."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from intentd.errors import AudioFileError

log = logging.getLogger(__name__)

MIN_RATE_HZ = 1000
MAX_RATE_HZ = 384_000


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


def check_rate(rate_hz: int, what: str) -> None:
    """Refuse sample rates no microphone or file really has."""
    if not MIN_RATE_HZ <= rate_hz <= MAX_RATE_HZ:
        raise AudioFileError(
            f"{what}: sample rate {rate_hz} Hz is outside {MIN_RATE_HZ}-{MAX_RATE_HZ} Hz"
        )


def open_wav(path: str | Path) -> sf.SoundFile:
    """Open an audio file soundfile reads, with one clear error when it cannot."""
    p = Path(path)
    if p.is_dir():
        raise AudioFileError(f"{p}: is a directory, not an audio file")
    if not p.exists():
        raise AudioFileError(f"{p}: no such file")
    try:
        f = sf.SoundFile(str(p))
    except (sf.LibsndfileError, RuntimeError, OSError) as e:
        raise AudioFileError(f"{p}: not a readable audio file ({e})") from e
    if f.channels < 1:
        f.close()
        raise AudioFileError(f"{p}: has no audio channels")
    try:
        check_rate(f.samplerate, str(p))
    except AudioFileError:
        f.close()
        raise
    return f


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """Read a whole audio file as float32 mono at its own rate."""
    with open_wav(path) as f:
        try:
            data = f.read(dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError) as e:
            raise AudioFileError(f"{path}: cannot decode audio ({e})") from e
        rate = f.samplerate
    mono = to_mono_float32(data)
    if not np.all(np.isfinite(mono)):
        raise AudioFileError(f"{path}: contains NaN or infinite samples")
    return mono, rate
