"""On-the-fly waveform augmentation and the batch collator that feeds the model."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.fft import irfft, next_fast_len, rfft
from scipy.signal import fftconvolve, lfilter
from transformers import TrainerCallback

from intentd.resample import change_speed
from intentd_train.settings import TARGET_RATE_HZ, AugmentConfig

log = logging.getLogger(__name__)

# Peak level a clip may reach after gain, so augmentation never clips the waveform.
MAX_PEAK = 0.99


def _pink(n: int, rng: np.random.Generator) -> np.ndarray:
    """1/f noise by shaping white noise in the frequency domain."""
    # At a clip's own length (often a large prime factor) the FFT cost more than a training
    # step's whole collation; a fast length, cut back to n, shapes the same noise.
    m = next_fast_len(n, real=True)
    spectrum = rfft(rng.standard_normal(m))
    f = np.arange(spectrum.size, dtype=np.float64)
    f[0] = 1.0
    return irfft(spectrum / np.sqrt(f), m)[:n]


def _brown(n: int, rng: np.random.Generator) -> np.ndarray:
    x = np.cumsum(rng.standard_normal(n))
    return x - np.linspace(x[0], x[-1], n)


class Augmenter:
    """Random speed, padding, EQ, reverb, noise and gain; one call per training clip."""

    def __init__(self, config: AugmentConfig, seed: int) -> None:
        self.config = config
        self.rng = np.random.default_rng(seed)
        self.share = config.max_share  # AugmentRamp moves it during training

    def set_progress(self, fraction: float) -> None:
        """Set the augmented share for training progress `fraction` (0 start, 1 end)."""
        c = self.config
        ramp = (fraction - c.clean_until) / max(c.full_from - c.clean_until, 1e-9)
        self.share = c.max_share * min(1.0, max(0.0, ramp))

    def __call__(self, wave: np.ndarray) -> np.ndarray:
        """Return an augmented copy of a 16 kHz float32 clip (or a plain copy, 1 - share of the time)."""
        c, rng = self.config, self.rng
        if rng.random() >= self.share:
            return wave.astype(np.float32)
        x = wave.astype(np.float64)
        x = change_speed(x, rng.uniform(*c.speed_range))
        pad = (rng.uniform(0, c.pad_s_max, size=2) * TARGET_RATE_HZ).astype(int)
        x = np.concatenate([np.zeros(pad[0]), x, np.zeros(pad[1])])
        if rng.random() < c.eq_prob:
            x = self._tilt(x)
        if rng.random() < c.reverb_prob:
            x = self._reverb(x)
        if rng.random() < c.noise_prob:
            x = self._noise(x)
        gain = 10 ** (rng.uniform(*c.gain_db_range) / 20)
        x = x * gain
        peak = np.max(np.abs(x)) if x.size else 0.0
        if peak > MAX_PEAK:
            x *= MAX_PEAK / peak
        return x.astype(np.float32)

    def _tilt(self, x: np.ndarray) -> np.ndarray:
        # One-pole pre-emphasis or de-emphasis: brighter or duller voices.
        a = self.rng.uniform(-0.7, 0.9)
        return lfilter([1.0, -a], [1.0], x) if a > 0 else lfilter([1.0], [1.0, a], x)

    def _reverb(self, x: np.ndarray) -> np.ndarray:
        rt60 = self.rng.uniform(*self.config.rt60_s_range)
        n = int(rt60 * TARGET_RATE_HZ)
        t = np.arange(n) / TARGET_RATE_HZ
        ir = self.rng.standard_normal(n) * np.exp(-6.9 * t / rt60)  # -60 dB at rt60
        ir[0] = 1.0
        ir /= np.sqrt(np.sum(ir**2))
        wet = fftconvolve(x, ir)[: len(x)]
        mix = self.rng.uniform(0.3, 1.0)
        return (1 - mix) * x + mix * wet

    def _noise(self, x: np.ndarray) -> np.ndarray:
        kind = self.rng.integers(3)
        n = len(x)
        noise = (
            self.rng.standard_normal(n)
            if kind == 0
            else _pink(n, self.rng)
            if kind == 1
            else _brown(n, self.rng)
        )
        signal_power = np.mean(x**2) + 1e-12
        noise_power = np.mean(noise**2) + 1e-12
        snr_db = self.rng.uniform(*self.config.snr_db_range)
        scale = np.sqrt(signal_power / (noise_power * 10 ** (snr_db / 10)))
        return x + scale * noise


# A training row with this column set true is augmented by the collator that batches it.
AUGMENT_COLUMN = "augment"


class AugmentRamp(TrainerCallback):
    """Tells the augmenter how far training has got: by the time budget when there is one."""

    def __init__(self, augmenter: Augmenter, budget_fraction: Callable[[], float] | None) -> None:
        self.augmenter = augmenter
        self.budget_fraction = budget_fraction

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Update the augmented share before each batch is drawn."""
        if self.budget_fraction is not None:
            fraction = self.budget_fraction()
        else:
            fraction = state.global_step / max(state.max_steps, 1)
        self.augmenter.set_progress(fraction)

    on_train_begin = on_step_begin


@dataclass
class Collator:
    """Pads a batch with the model's feature extractor (the daemon's own feature path)."""

    feature_extractor: object
    max_length_s: float
    augmenter: Augmenter | None = None  # applied to rows whose AUGMENT_COLUMN is true

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        """Turn `{"input_values", "label"}` rows (lists or numpy) into padded tensors."""
        max_samples = int(self.max_length_s * TARGET_RATE_HZ)
        full = [np.asarray(f["input_values"], dtype=np.float32) for f in features]
        if self.augmenter is not None:
            full = [
                self.augmenter(w) if f.get(AUGMENT_COLUMN) else w for f, w in zip(features, full, strict=True)
            ]
        waves = [w[:max_samples] for w in full]
        batch = self.feature_extractor(  # type: ignore[operator]
            waves, sampling_rate=TARGET_RATE_HZ, padding="longest", return_tensors="pt"
        )
        batch["labels"] = torch.tensor([int(f["label"]) for f in features], dtype=torch.long)
        if "transcript" in features[0]:
            # A cut clip no longer says its whole transcript: it gets none (length 0).
            texts = [
                [int(c) for c in f["transcript"]]
                if f["transcript"] is not None and len(w) <= max_samples
                else []
                for f, w in zip(features, full, strict=True)
            ]
            width = max(1, max(len(t) for t in texts))
            batch["transcript"] = torch.tensor([t + [0] * (width - len(t)) for t in texts])
            batch["transcript_lengths"] = torch.tensor([len(t) for t in texts])
        return dict(batch)
