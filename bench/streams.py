"""Synthetic test streams for benchmarks: several voices, gaps of silence, pink noise, known spans."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from intentd.resample import resample
from intentd.speak import speak

SILENCE_LEVEL = 0.01  # |sample| above which a synthesizer's output counts as speech
VOICES = ("en-us", "en-gb+f3", "en-us+m3", "en-gb-x-rp", "en-us+f2", "en-gb-scotland", "en-029", "en+m7")
REQUESTS = (
    ("balance", "Hi, can you tell me what my current balance is?"),
    ("freeze", "I think my card was stolen, can you block it please?"),
    ("address", "I need to update my home address."),
    ("pay_bill", "I'd like to pay my water bill."),
    ("atm_limit", "How much can I withdraw from a cash machine each day?"),
    ("abroad", "I'm going to France next week, will my card work there?"),
    ("joint_account", "Can my husband and I open an account together?"),
    ("app_error", "The banking app keeps crashing when I try to log in."),
    ("cash_deposit", "Where can I pay in some cash?"),
    ("direct_debit", "I want to cancel a direct debit."),
    ("latest_transactions", "Can you read me my last few transactions?"),
    ("business_loan", "I'm looking for a loan to expand my small business."),
    ("card_issues", "My card isn't working in shops."),
    ("high_value_payment", "I need to send thirty thousand pounds to my solicitor."),
)


@dataclass(frozen=True)
class Stream:
    """A synthetic stream and the truth about it."""

    samples: np.ndarray
    rate_hz: int
    spans_s: list[tuple[float, float]]
    intents: list[str]


def pink_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """Unit-RMS 1/f noise made by shaping white noise in the frequency domain."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    f = np.arange(spectrum.size, dtype=np.float64)
    f[0] = 1.0
    x = np.fft.irfft(spectrum / np.sqrt(f), n)
    return (x / np.sqrt(np.mean(x**2))).astype(np.float32)


def trim_silence(samples: np.ndarray) -> np.ndarray:
    """The samples from the first to the last one above the silence threshold."""
    loud = np.flatnonzero(np.abs(samples) > SILENCE_LEVEL)
    return samples[loud[0] : loud[-1] + 1] if loud.size else samples[:0]


def add_noise(audio: np.ndarray, speech_rms: float, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """`audio` plus pink noise `snr_db` below `speech_rms`, clipped to [-1, 1], float32."""
    noise = pink_noise(audio.size, rng).astype(np.float64) * (speech_rms / 10 ** (snr_db / 20))
    return np.clip(audio + noise, -1, 1).astype(np.float32)  # mixed in float64, rounded once


def assemble_stream(
    utterances: Iterable[tuple[str, np.ndarray, int]],
    rate_hz: int,
    snr_db: float | None,
    rng: np.random.Generator,
    gap_range_s: tuple[float, float] = (1.0, 2.5),
    max_s: float | None = None,
) -> Stream:
    """(intent, samples, their rate) utterances, trimmed, each at a random level and followed by a
    random gap, after a leading gap; pink noise at `snr_db` (mean speech power) over the whole stream.

    `utterances` is consumed lazily and only while the stream is shorter than `max_s`, so it may be
    endless and may draw from `rng` itself: draws happen in stream order.
    """
    parts = [np.zeros(int(rng.uniform(*gap_range_s) * rate_hz), np.float32)]
    pos = parts[0].size
    spans: list[tuple[float, float]] = []
    intents: list[str] = []
    speech_power: list[float] = []
    items = iter(utterances)
    while max_s is None or pos < max_s * rate_hz:
        try:
            intent, raw, raw_rate = next(items)
        except StopIteration:
            break
        speech = resample(trim_silence(raw), raw_rate, rate_hz) * float(rng.uniform(0.3, 0.9))
        gap = np.zeros(int(rng.uniform(*gap_range_s) * rate_hz), np.float32)
        spans.append((pos / rate_hz, (pos + speech.size) / rate_hz))
        intents.append(intent)
        speech_power.append(float(np.mean(speech**2)))
        parts += [speech, gap]
        pos += speech.size + gap.size
    audio = np.concatenate(parts)
    if snr_db is None:
        return Stream(np.clip(audio, -1, 1).astype(np.float32), rate_hz, spans, intents)
    return Stream(
        add_noise(audio, float(np.sqrt(np.mean(speech_power))), snr_db, rng), rate_hz, spans, intents
    )


def build_stream(
    duration_s: float = 120.0,
    rate_hz: int = 48000,
    snr_db: float | None = 20.0,
    gap_range_s: tuple[float, float] = (1.0, 2.5),
    seed: int = 0,
) -> Stream:
    """Requests in several voices separated by random gaps, with pink noise at `snr_db` (speech RMS)."""
    rng = np.random.default_rng(seed)

    def requests() -> Iterator[tuple[str, np.ndarray, int]]:
        for i in itertools.count():
            intent, text = REQUESTS[int(rng.integers(len(REQUESTS)))]
            raw, raw_rate = speak(text, voice=VOICES[i % len(VOICES)], wpm=int(rng.integers(140, 190)))
            yield intent, raw, raw_rate

    return assemble_stream(requests(), rate_hz, snr_db, rng, gap_range_s, max_s=duration_s)
