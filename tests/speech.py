"""Generated speech for tests: espeak-ng utterances with known start and end times."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from intentd.speak import speak

ESPEAK_RATE_HZ = 22050
# espeak-ng pads its output with near-silence; samples below this count as silence when we
# measure where the words really start and end.
TRIM_THRESHOLD = 0.01


def say(text: str, voice: str = "en-us", wpm: int = 160, pitch: int = 50) -> np.ndarray:
    """Speak `text` with espeak-ng; float32 mono at 22.05 kHz, leading/trailing silence trimmed."""
    samples, rate = speak(text, voice=voice, wpm=wpm, pitch=pitch)
    assert rate == ESPEAK_RATE_HZ
    loud = np.flatnonzero(np.abs(samples) > TRIM_THRESHOLD)
    return samples[loud[0] : loud[-1] + 1] if loud.size else samples[:0]


def convert_rate(samples: np.ndarray, from_hz: int, to_hz: int) -> np.ndarray:
    """Change the sample rate of test audio (independent of the daemon's resampler)."""
    if from_hz == to_hz:
        return samples.astype(np.float32)
    f = Fraction(to_hz, from_hz)
    return resample_poly(samples, f.numerator, f.denominator).astype(np.float32)


@dataclass(frozen=True)
class Recording:
    """A synthetic recording and the true spans of its utterances."""

    samples: np.ndarray
    rate_hz: int
    spans_s: list[tuple[float, float]]
    texts: list[str]

    def write(self, path: Path, subtype: str = "PCM_16") -> Path:
        """Save as a WAV file."""
        sf.write(str(path), self.samples, self.rate_hz, subtype=subtype)
        return path


def recording(
    texts: list[str],
    rate_hz: int = 16000,
    gap_s: float = 1.5,
    lead_s: float = 0.8,
    voices: list[str] | None = None,
    noise_dbfs: float | None = None,
    seed: int = 0,
) -> Recording:
    """Utterances separated by `gap_s` of silence (or noise), resampled to `rate_hz`."""
    voices = voices or ["en-us"]
    parts: list[np.ndarray] = [np.zeros(int(lead_s * rate_hz), np.float32)]
    spans: list[tuple[float, float]] = []
    pos = len(parts[0])
    for i, text in enumerate(texts):
        speech = convert_rate(say(text, voice=voices[i % len(voices)]), ESPEAK_RATE_HZ, rate_hz)
        spans.append((pos / rate_hz, (pos + len(speech)) / rate_hz))
        gap = np.zeros(int(gap_s * rate_hz), np.float32)
        parts += [speech, gap]
        pos += len(speech) + len(gap)
    samples = np.concatenate(parts).astype(np.float32)
    if noise_dbfs is not None:
        rng = np.random.default_rng(seed)
        samples += (10 ** (noise_dbfs / 20) * rng.standard_normal(len(samples))).astype(np.float32)
    samples = np.clip(samples, -1.0, 1.0)
    return Recording(samples, rate_hz, spans, list(texts))
