"""Sample-rate conversion to the model's 16 kHz: the one implementation daemon and training share."""

from __future__ import annotations

import dataclasses
import logging
from fractions import Fraction
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np
from scipy.signal import firwin, resample_poly

if TYPE_CHECKING:
    from intentd.segment import Segment

log = logging.getLogger(__name__)

MODEL_RATE_HZ = 16000
# scipy.signal.resample_poly's own default filter: a Kaiser-windowed sinc, 10 zero crossings
# per side at the lower of the two rates. We design it ourselves only to cache it.
FILTER_ZERO_CROSSINGS = 10
FILTER_KAISER_BETA = 5.0
# Speeds this close to 1 leave the audio as it is.
SPEED_TOLERANCE = 1e-3


@lru_cache(maxsize=32)
def _lowpass(up: int, down: int) -> np.ndarray:
    """The anti-aliasing FIR resample_poly would design for `up/down`, designed once."""
    # Designing it costs ~1 ms (e.g. 8821 taps for 44.1 -> 16 kHz); the VAD converts every
    # 30 ms frame of a 44.1 kHz stream, so the design must not be repeated per call.
    max_rate = max(up, down)
    half_len = FILTER_ZERO_CROSSINGS * max_rate
    taps = firwin(2 * half_len + 1, 1.0 / max_rate, window=("kaiser", FILTER_KAISER_BETA))
    taps = taps.astype(np.float32)
    taps.flags.writeable = False
    return taps


def resample(samples: np.ndarray, rate_hz: int, target_hz: int = MODEL_RATE_HZ) -> np.ndarray:
    """Convert 1-D audio from `rate_hz` to `target_hz` as float32 (polyphase, gcd-reduced ratio)."""
    if rate_hz <= 0 or target_hz <= 0:
        raise ValueError(f"sample rates must be positive, got {rate_hz} -> {target_hz} Hz")
    x = np.ascontiguousarray(samples, dtype=np.float32)
    if x.ndim != 1:
        raise ValueError(f"resample takes 1-D mono audio, got shape {x.shape}")
    if rate_hz == target_hz:
        return x
    ratio = Fraction(target_hz, rate_hz)
    up, down = ratio.numerator, ratio.denominator
    # Output length is ceil(len * up / down), the same as resample_poly's default filter gives.
    y = resample_poly(x, up, down, window=_lowpass(up, down))
    return np.asarray(y, dtype=np.float32)


def change_speed(samples: np.ndarray, speed: float) -> np.ndarray:
    """1-D audio played `speed` times as fast (tempo and pitch together), in the input's dtype.

    Linear interpolation: the speed augmentation of training and the classifier's test-time
    speeds are this one function, so a model hears at inference what it heard in training.
    """
    if speed <= 0:
        raise ValueError(f"speed must be positive, got {speed}")
    if abs(speed - 1.0) <= SPEED_TOLERANCE or len(samples) < 2:
        return samples.copy()
    pos = np.arange(0.0, len(samples) - 1, speed)
    return np.interp(pos, np.arange(len(samples)), samples).astype(samples.dtype, copy=False)


def to_model_rate(samples: np.ndarray, rate_hz: int, trained_rate_hz: int | None = None) -> np.ndarray:
    """Audio at 16 kHz as a checkpoint trained on `trained_rate_hz` audio heard it in training.

    Input wider than that goes through `trained_rate_hz` first: a model trained on 8 kHz clips
    has never heard 4-8 kHz, and noise or sibilance there only moves its answers.
    """
    if trained_rate_hz is not None and trained_rate_hz < min(rate_hz, MODEL_RATE_HZ):
        samples, rate_hz = resample(samples, rate_hz, trained_rate_hz), trained_rate_hz
    return resample(samples, rate_hz, MODEL_RATE_HZ)


class Resampler:
    """Pipeline stage: bring each whole VAD segment to `target_hz` (not a streaming resampler)."""

    def __init__(self, target_hz: int = MODEL_RATE_HZ) -> None:
        if target_hz <= 0:
            raise ValueError(f"target rate must be positive, got {target_hz} Hz")
        self.target_hz = target_hz

    def process(self, segment: Segment) -> Segment:
        """Return `segment` with its audio at `target_hz`; times and flags are unchanged."""
        if segment.rate_hz == self.target_hz:
            return segment
        samples = resample(segment.samples, segment.rate_hz, self.target_hz)
        return dataclasses.replace(segment, samples=samples, rate_hz=self.target_hz)

    def flush(self) -> list[Segment]:
        """Nothing is held between segments, so there is nothing to emit."""
        return []

    def reset(self) -> None:
        """Nothing is held between segments, so there is nothing to clear."""
