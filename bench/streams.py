"""Synthetic test streams for benchmarks: several voices, gaps of silence, pink noise, known spans."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from intentd.resample import resample
from intentd.speak import speak

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


def build_stream(
    duration_s: float = 120.0,
    rate_hz: int = 48000,
    snr_db: float | None = 20.0,
    gap_range_s: tuple[float, float] = (1.0, 2.5),
    seed: int = 0,
) -> Stream:
    """Requests in several voices separated by random gaps, with pink noise at `snr_db` (speech RMS)."""
    rng = np.random.default_rng(seed)
    parts = [np.zeros(int(rng.uniform(*gap_range_s) * rate_hz), np.float32)]
    pos = parts[0].size
    spans: list[tuple[float, float]] = []
    intents: list[str] = []
    speech_power: list[float] = []
    i = 0
    while pos < duration_s * rate_hz:
        intent, text = REQUESTS[int(rng.integers(len(REQUESTS)))]
        raw, raw_rate = speak(text, voice=VOICES[i % len(VOICES)], wpm=int(rng.integers(140, 190)))
        loud = np.flatnonzero(np.abs(raw) > 0.01)
        speech = resample(raw[loud[0] : loud[-1] + 1], raw_rate, rate_hz) * float(rng.uniform(0.3, 0.9))
        gap = np.zeros(int(rng.uniform(*gap_range_s) * rate_hz), np.float32)
        spans.append((pos / rate_hz, (pos + speech.size) / rate_hz))
        intents.append(intent)
        speech_power.append(float(np.mean(speech**2)))
        parts += [speech, gap]
        pos += speech.size + gap.size
        i += 1
    audio = np.concatenate(parts)
    if snr_db is not None:
        noise_rms = np.sqrt(np.mean(speech_power)) / 10 ** (snr_db / 20)
        audio = audio + noise_rms * pink_noise(audio.size, rng)
    return Stream(np.clip(audio, -1, 1).astype(np.float32), rate_hz, spans, intents)
