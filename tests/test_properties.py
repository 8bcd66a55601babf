"""Properties of the segmenter over generated audio: chunking never matters, odd input never breaks it."""

from __future__ import annotations

import dataclasses
from functools import lru_cache

import numpy as np
import speech
from hypothesis import event, given, settings
from hypothesis import strategies as st

from intentd.segment import Segment, SegmenterOutput, Tentative, Withdrawn, final_segments
from intentd.vad import Segmenter, VadConfig

RATES_HZ = (8000, 16000, 22050)
# Speech long enough for several segments and, with the short config, forced cuts.
TEXTS = ["please freeze my card", "how do I pay my phone bill", "what is the balance of my account"]
SHORT_CUTS = VadConfig(max_segment_s=1.0)
# The 0.7 s gaps fall inside this hangover: speech resumes after a Tentative, which is withdrawn.
LONG_HANGOVER = VadConfig(hangover_ms=900, tail_ms=300)
CONFIGS = (VadConfig(), SHORT_CUTS, LONG_HANGOVER)
SPECIALS = (float("nan"), float("inf"), -float("inf"), 1e-40, -1e-45, 10.0, -10.0, 0.0)
GAINS = (0.0, 1e-40, 1e-4, 0.5, 1.0, 10.0)
MAX_CHUNK = 5000

PROPERTY_SETTINGS = settings(max_examples=40, deadline=None)


@lru_cache(maxsize=len(RATES_HZ))
def spoken(rate_hz: int) -> np.ndarray:
    """A few utterances with pauses between them (espeak-ng), made once per rate."""
    return speech.recording(TEXTS, rate_hz=rate_hz, gap_s=0.7, lead_s=0.3).samples


@st.composite
def audio(draw: st.DrawFn) -> tuple[np.ndarray, int]:
    """Speech, noise, a tone or silence, at any gain, with NaN/Inf/denormal/clipping samples spliced in."""
    rate_hz = draw(st.sampled_from(RATES_HZ))
    kind = draw(st.sampled_from(["speech", "noise", "tone", "silence"]))
    seconds = draw(st.floats(0.0, 4.0))
    n = int(seconds * rate_hz)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if kind == "speech":
        base = spoken(rate_hz)
        start = draw(st.integers(0, max(0, len(base) - 1)))
        x = base[start:]
    elif kind == "noise":
        x = rng.standard_normal(n).astype(np.float32) * 0.3
    elif kind == "tone":
        x = np.sin(2 * np.pi * 300.0 * np.arange(n) / rate_hz).astype(np.float32)
    else:
        x = np.zeros(n, np.float32)
    x = (x * np.float32(draw(st.sampled_from(GAINS)))).astype(np.float32)
    for _ in range(draw(st.integers(0, 5))):
        if x.size:
            at = draw(st.integers(0, x.size - 1))
            length = draw(st.integers(1, 200))
            x[at : at + length] = draw(st.sampled_from(SPECIALS))
    return x, rate_hz


def chunked(x: np.ndarray, sizes: list[int]) -> list[np.ndarray]:
    """`x` cut into chunks of the given sizes, cycled (a 0 size gives an empty chunk)."""
    out: list[np.ndarray] = []
    pos = 0
    i = 0
    while pos < x.size:
        size = sizes[i % len(sizes)]
        out.append(x[pos : pos + size])
        pos += size
        i += 1
    return out


def segment(x: np.ndarray, rate_hz: int, config: VadConfig, sizes: list[int]) -> list[Segment]:
    """Every segment of `x` fed in chunks of `sizes`, flush included."""
    return final_segments(outputs(x, rate_hz, config, sizes))


def outputs(x: np.ndarray, rate_hz: int, config: VadConfig, sizes: list[int]) -> list[SegmenterOutput]:
    """Everything the segmenter outputs for `x` fed in chunks of `sizes`, flush included."""
    seg = Segmenter(config, rate_hz, "prop")
    out: list[SegmenterOutput] = []
    for c in chunked(x, sizes):
        out += seg.process(c)
    return out + seg.flush()


def key(s: Segment) -> tuple[float, float, float, bool, bytes]:
    """Everything that identifies a segment."""
    return (s.start_s, s.end_s, s.end_of_speech_s, s.forced, s.samples.tobytes())


# Empty chunks included; the trailing 1 makes every cycle advance.
chunk_sizes = st.lists(st.integers(0, MAX_CHUNK), min_size=1, max_size=8).map(lambda s: [*s, 1])


@PROPERTY_SETTINGS
@given(audio(), st.sampled_from(CONFIGS), chunk_sizes, chunk_sizes)
def test_chunking_never_changes_the_segments(
    clip: tuple[np.ndarray, int], config: VadConfig, sizes_a: list[int], sizes_b: list[int]
) -> None:
    x, rate_hz = clip
    whole = segment(x, rate_hz, config, [max(1, x.size)])
    event(f"segments: {min(len(whole), 2)}+" if whole else "no segments")
    event("forced cut" if any(s.forced for s in whole) else "no forced cut")
    assert [key(s) for s in segment(x, rate_hz, config, sizes_a)] == [key(s) for s in whole]
    assert [key(s) for s in segment(x, rate_hz, config, sizes_b)] == [key(s) for s in whole]


@PROPERTY_SETTINGS
@given(audio(), st.sampled_from(CONFIGS), chunk_sizes)
def test_segments_are_ordered_disjoint_bounded_and_finite(
    clip: tuple[np.ndarray, int], config: VadConfig, sizes: list[int]
) -> None:
    x, rate_hz = clip
    segments = segment(x, rate_hz, config, sizes)
    total_s = x.size / rate_hz
    max_samples = int(config.max_segment_s * rate_hz)
    previous_end_s = 0.0
    for s in segments:
        assert s.rate_hz == rate_hz and s.source == "prop"
        assert previous_end_s <= s.start_s <= s.end_of_speech_s <= s.end_s <= total_s
        assert s.samples.dtype == np.float32 and s.samples.ndim == 1
        assert s.samples.size == round((s.end_s - s.start_s) * rate_hz) <= max_samples
        assert np.isfinite(s.samples).all()
        previous_end_s = s.end_s


def test_the_generated_audio_makes_segments_and_forced_cuts() -> None:
    # The properties mean little if the generated speech never opened a segment.
    segments = segment(spoken(16000), 16000, SHORT_CUTS, [480])
    assert len(segments) >= len(TEXTS) and any(s.forced for s in segments)
    assert any(isinstance(o, Withdrawn) for o in outputs(spoken(16000), 16000, LONG_HANGOVER, [480]))


@PROPERTY_SETTINGS
@given(audio(), st.sampled_from(CONFIGS), chunk_sizes)
def test_speculation_never_changes_the_segments_and_answers_every_tentative(
    clip: tuple[np.ndarray, int], config: VadConfig, sizes: list[int]
) -> None:
    x, rate_hz = clip
    outs = outputs(x, rate_hz, config, sizes)
    plain = segment(x, rate_hz, dataclasses.replace(config, speculative=False), [max(1, x.size)])
    assert [key(s) for s in final_segments(outs)] == [key(s) for s in plain]
    event("withdrawn" if any(isinstance(o, Withdrawn) for o in outs) else "none withdrawn")
    pending: Segment | None = None
    for o in outs:  # the very next output answers a Tentative: a Withdrawn of it, or itself
        if pending is not None:
            assert (o.segment if isinstance(o, Withdrawn) else o) is pending
            pending = None
        elif isinstance(o, Tentative):
            assert not o.segment.forced
            pending = o.segment
        else:
            assert isinstance(o, Segment), "a Withdrawn without a Tentative"
    assert pending is None, "flush answers the last Tentative"
