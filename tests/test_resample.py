"""The one resampler: lengths, pitch and level preserved at every supported source rate."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy.signal import resample_poly

from intentd.resample import MODEL_RATE_HZ, Resampler, change_speed, resample, to_model_rate
from intentd.segment import Segment

RATES_HZ = [8000, 11025, 16000, 22050, 32000, 44100, 48000]
TONE_HZ = 440.0
TONE_AMPLITUDE = 0.5
DURATION_S = 1.0


def tone(rate_hz: int, seconds: float = DURATION_S) -> np.ndarray:
    """A 440 Hz sine at `rate_hz`."""
    t = np.arange(int(seconds * rate_hz)) / rate_hz
    return (TONE_AMPLITUDE * np.sin(2 * np.pi * TONE_HZ * t)).astype(np.float32)


@pytest.mark.parametrize("rate_hz", RATES_HZ)
def test_output_length_matches_rate_ratio(rate_hz: int) -> None:
    for n in (0, 1, 997, rate_hz, 3 * rate_hz + 5):
        y = resample(np.zeros(n, np.float32), rate_hz)
        assert y.dtype == np.float32
        assert abs(len(y) - round(n * MODEL_RATE_HZ / rate_hz)) <= 1


@pytest.mark.parametrize("rate_hz", RATES_HZ)
def test_tone_keeps_frequency_and_amplitude(rate_hz: int) -> None:
    y = resample(tone(rate_hz), rate_hz)
    spectrum = np.abs(np.fft.rfft(y * np.hanning(len(y))))
    peak_hz = np.argmax(spectrum) * MODEL_RATE_HZ / len(y)
    assert abs(peak_hz - TONE_HZ) <= MODEL_RATE_HZ / len(y)
    # Away from the filter's edge transients the sine keeps its level.
    middle = y[len(y) // 10 : -len(y) // 10]
    assert np.sqrt(np.mean(middle**2)) == pytest.approx(TONE_AMPLITUDE / np.sqrt(2), rel=0.01)
    assert np.max(np.abs(middle)) == pytest.approx(TONE_AMPLITUDE, rel=0.01)


def test_same_rate_is_identity_without_copy() -> None:
    x = tone(MODEL_RATE_HZ)
    assert resample(x, MODEL_RATE_HZ) is x
    y = resample(x.astype(np.float64), MODEL_RATE_HZ)
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, x)


@pytest.mark.parametrize("rate_hz", [22050, 44100, 8000])
def test_matches_scipy_resample_poly(rate_hz: int) -> None:
    # The cached filter must give what resample_poly's own default design gives.
    x = np.random.default_rng(0).standard_normal(rate_hz // 3).astype(np.float32)
    up, down = {22050: (320, 441), 44100: (160, 441), 8000: (2, 1)}[rate_hz]
    np.testing.assert_array_equal(resample(x, rate_hz), resample_poly(x, up, down))


def test_other_target_rate() -> None:
    y = resample(tone(MODEL_RATE_HZ), MODEL_RATE_HZ, target_hz=8000)
    assert len(y) == 8000


def test_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="1-D"):
        resample(np.zeros((10, 2), np.float32), 44100)
    with pytest.raises(ValueError, match="positive"):
        resample(np.zeros(10, np.float32), 0)


def test_resampler_stage_converts_segment_audio_only() -> None:
    segment = Segment(
        samples=tone(44100),
        rate_hz=44100,
        start_s=1.5,
        end_s=2.5,
        end_of_speech_s=2.4,
        source="mic",
        forced=False,
    )
    stage = Resampler()
    out = stage.process(segment)
    assert out.rate_hz == MODEL_RATE_HZ
    assert len(out.samples) == MODEL_RATE_HZ
    np.testing.assert_array_equal(out.samples, resample(segment.samples, 44100))
    for field in ("start_s", "end_s", "end_of_speech_s", "source", "forced"):
        assert getattr(out, field) == getattr(segment, field)
    at_model_rate = dataclasses.replace(segment, samples=tone(MODEL_RATE_HZ), rate_hz=16000)
    assert stage.process(at_model_rate) is at_model_rate
    assert stage.flush() == []


def _level_at(y: np.ndarray, freq_hz: int) -> float:
    """Amplitude of the `freq_hz` component of one second of 16 kHz audio."""
    return float(np.abs(np.fft.rfft(y[:MODEL_RATE_HZ]))[freq_hz] * 2 / MODEL_RATE_HZ)


def test_a_model_trained_on_8khz_audio_gets_only_its_band() -> None:
    t = np.arange(48000) / 48000
    x = (0.3 * np.sin(2 * np.pi * 1000 * t) + 0.3 * np.sin(2 * np.pi * 6000 * t)).astype(np.float32)
    limited, wide = to_model_rate(x, 48000, 8000), to_model_rate(x, 48000, None)
    assert len(limited) == len(wide) == MODEL_RATE_HZ
    assert _level_at(wide, 6000) == pytest.approx(0.3, rel=0.02)
    assert _level_at(limited, 6000) < 0.003  # at least 40 dB down
    assert _level_at(limited, 1000) == pytest.approx(_level_at(wide, 1000), rel=0.02)


@pytest.mark.parametrize(
    ("rate_hz", "trained_rate_hz"), [(8000, 8000), (48000, 16000), (48000, 44100), (8000, 16000)]
)
def test_input_no_wider_than_the_training_audio_is_only_resampled(rate_hz: int, trained_rate_hz: int) -> None:
    x = tone(rate_hz)
    assert np.array_equal(to_model_rate(x, rate_hz, trained_rate_hz), resample(x, rate_hz))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_change_speed_plays_faster_in_tempo_and_pitch(dtype: type) -> None:
    t = np.arange(MODEL_RATE_HZ) / MODEL_RATE_HZ
    x = np.sin(2 * np.pi * 400 * t).astype(dtype)
    y = change_speed(x, 1.25)
    assert y.dtype == dtype and len(y) == pytest.approx(len(x) / 1.25, abs=1)
    peak_hz = np.argmax(np.abs(np.fft.rfft(y))) * MODEL_RATE_HZ / len(y)
    assert peak_hz == pytest.approx(500, abs=2)  # 400 Hz played 1.25 times as fast
    same = change_speed(x, 1.0)
    assert same is not x and np.array_equal(same, x)


def test_change_speed_refuses_a_speed_that_is_not_positive() -> None:
    with pytest.raises(ValueError, match="speed must be positive"):
        change_speed(np.zeros(100, np.float32), 0.0)
