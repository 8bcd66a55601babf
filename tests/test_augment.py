"""Training augmentation: clean clips early in training, a ramp to the configured share."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.signal import lfilter, welch
from speech import ESPEAK_RATE_HZ, say

from intentd.resample import resample
from intentd_train.augment import Augmenter, shift_formants
from intentd_train.settings import AugmentConfig


@pytest.fixture(scope="module")
def clip() -> np.ndarray:
    return resample(say("check my balance please"), ESPEAK_RATE_HZ, 16000)


def _changed_share(augmenter: Augmenter, clip: np.ndarray, n: int = 200) -> float:
    changed = 0
    for _ in range(n):
        out = augmenter(clip)
        changed += out.shape != clip.shape or not np.array_equal(out, clip)
    return changed / n


def test_share_ramps_from_clean_to_the_configured_maximum(clip: np.ndarray) -> None:
    config = AugmentConfig(clean_until=0.2, full_from=0.6, max_share=0.8)
    augmenter = Augmenter(config, seed=0)
    augmenter.set_progress(0.1)
    assert augmenter.share == 0.0 and _changed_share(augmenter, clip) == 0.0
    augmenter.set_progress(0.4)
    assert augmenter.share == pytest.approx(0.4)
    augmenter.set_progress(0.9)
    assert augmenter.share == pytest.approx(0.8)
    assert 0.7 < _changed_share(augmenter, clip) < 0.9


def test_an_augmented_clip_stays_float32_and_unclipped(clip: np.ndarray) -> None:
    augmenter = Augmenter(AugmentConfig(max_share=1.0), seed=1)
    for _ in range(20):
        out = augmenter(clip)
        assert out.dtype == np.float32 and np.abs(out).max() <= 0.99


def test_the_collator_augments_flagged_training_rows_only(clip: np.ndarray) -> None:
    from transformers import Wav2Vec2FeatureExtractor

    from intentd_train.augment import AUGMENT_COLUMN, Collator

    extractor = Wav2Vec2FeatureExtractor(do_normalize=False, return_attention_mask=True)
    collate = Collator(extractor, max_length_s=6.0, augmenter=Augmenter(AugmentConfig(max_share=1.0), seed=2))
    rows = [
        {"input_values": clip, "label": 0, AUGMENT_COLUMN: True},  # numpy, as training reads it
        {"input_values": clip.tolist(), "label": 1},  # a held-out row: no flag
    ]
    batch = collate(rows)
    n = clip.size
    assert not np.allclose(batch["input_values"][0, :n].numpy(), clip, atol=1e-4)
    assert np.allclose(batch["input_values"][1, :n].numpy(), clip, atol=1e-6)
    assert batch["labels"].tolist() == [0, 1]


RATE_HZ = 16000


def _vowel(f0_hz: int, formants_hz: tuple[int, ...]) -> np.ndarray:
    """A glottal pulse train through two-pole resonances: a vowel whose pitch and formants are known."""
    pulses = np.zeros(2 * RATE_HZ)
    pulses[:: RATE_HZ // f0_hz] = 1.0
    out = np.zeros_like(pulses)
    for f in formants_hz:
        theta = 2 * np.pi * f / RATE_HZ
        out += lfilter([1.0], [1.0, -2 * 0.97 * np.cos(theta), 0.97**2], pulses)
    return out


def _centroid_hz(x: np.ndarray) -> float:
    f, p = welch(x, RATE_HZ, nperseg=4096)
    band = f < 4000
    return float(np.sum(f[band] * p[band]) / np.sum(p[band]))


def _pitch_hz(x: np.ndarray) -> float:
    seg = x[RATE_HZ // 2 : RATE_HZ]
    ac = np.correlate(seg, seg, "full")[len(seg) - 1 :]
    lag = 40 + int(np.argmax(ac[40:400]))  # 40-400 Hz
    return RATE_HZ / lag


@pytest.mark.parametrize("f0_hz", [100, 200])
def test_a_formant_shift_moves_the_envelope_and_keeps_pitch_and_length(f0_hz: int) -> None:
    vowel = _vowel(f0_hz, (700, 1800))
    up, down = shift_formants(vowel, 1.2), shift_formants(vowel, 0.8)
    assert len(up) == len(down) == len(vowel)
    assert _centroid_hz(up) > 1.1 * _centroid_hz(vowel) > 1.1**2 * _centroid_hz(down)
    assert _pitch_hz(up) == _pitch_hz(down) == _pitch_hz(vowel) == pytest.approx(f0_hz, rel=0.02)


def test_a_formant_shift_by_one_changes_nothing_audible(clip: np.ndarray) -> None:
    same = shift_formants(clip.astype(np.float64), 1.0)
    assert np.max(np.abs(same - clip)) < 1e-4
