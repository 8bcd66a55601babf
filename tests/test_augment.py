"""Training augmentation: clean clips early in training, a ramp to the configured share."""

from __future__ import annotations

import numpy as np
import pytest
from speech import ESPEAK_RATE_HZ, say

from intentd.resample import resample
from intentd_train.augment import Augmenter
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


def test_pink_noise_at_an_awkward_length_falls_3_db_per_octave() -> None:
    from intentd_train.augment import _pink

    n = 70_001  # prime: the length a clip may have
    noise = _pink(n, np.random.default_rng(0))
    assert noise.shape == (n,)
    power = np.abs(np.fft.rfft(noise)) ** 2
    hz = np.fft.rfftfreq(n, 1 / 16000)

    def band(lo: float) -> float:
        return float(power[(hz >= lo) & (hz < 2 * lo)].sum())

    # 1/f power: every octave holds the same energy; white noise would double per octave.
    ratio_db = 10 * np.log10(band(2000) / band(250))
    assert abs(ratio_db) < 1.0
