"""The VAD segmenter on real generated speech: one segment per utterance, whatever the chunking."""

from __future__ import annotations

import dataclasses
import threading
from functools import cache
from itertools import pairwise

import numpy as np
import pytest
import speech

from intentd import vad
from intentd.errors import ConfigError
from intentd.segment import Segment, SegmenterOutput, Tentative, Withdrawn, final_segments
from intentd.vad import Segmenter, VadConfig

TOLERANCE_S = 0.3
TEXTS = [
    "turn on the kitchen lights",
    "set a timer for ten minutes, please",
    "what's the weather like tomorrow",
    "open the garage door",
]
VOICES = ["en-us", "en-gb", "en+f3"]
RATES_HZ = [8000, 16000, 22050, 44100, 48000]


@cache
def rec(
    rate_hz: int, gap_s: float = 1.5, noise_dbfs: float | None = None, n: int = len(TEXTS)
) -> speech.Recording:
    """A cached recording of the first `n` test utterances."""
    return speech.recording(TEXTS[:n], rate_hz=rate_hz, gap_s=gap_s, voices=VOICES, noise_dbfs=noise_dbfs)


def run(
    samples: np.ndarray, rate_hz: int, chunk: int | None = None, config: VadConfig | None = None
) -> list[Segment]:
    """The segments of `samples` fed in chunks of `chunk` samples (all at once when None), then flush."""
    return final_segments(outputs(samples, rate_hz, chunk, config))


def outputs(
    samples: np.ndarray, rate_hz: int, chunk: int | None = None, config: VadConfig | None = None
) -> list[SegmenterOutput]:
    """Everything the segmenter outputs for `samples`, Tentative and Withdrawn included."""
    seg = Segmenter(config or VadConfig(), rate_hz, source="test")
    step = chunk or max(len(samples), 1)
    out: list[SegmenterOutput] = []
    for i in range(0, len(samples), step):
        out += seg.process(samples[i : i + step])
    return out + seg.flush()


def assert_matches_truth(segments: list[Segment], r: speech.Recording) -> None:
    """One segment per utterance, in order, near the true spans, cut from the source audio."""
    assert len(segments) == len(r.spans_s), [(s.start_s, s.end_s) for s in segments]
    previous_end_s = 0.0
    for s, (true_start_s, true_end_s) in zip(segments, r.spans_s, strict=True):
        assert abs(s.start_s - true_start_s) <= TOLERANCE_S
        assert abs(s.end_of_speech_s - true_end_s) <= TOLERANCE_S
        assert abs(s.end_s - true_end_s) <= TOLERANCE_S
        assert previous_end_s <= s.start_s < s.end_of_speech_s <= s.end_s
        previous_end_s = s.end_s
        assert s.rate_hz == r.rate_hz and s.source == "test" and not s.forced
        assert s.samples.dtype == np.float32
        first = round(s.start_s * r.rate_hz)
        np.testing.assert_array_equal(s.samples, r.samples[first : first + len(s.samples)])
        assert first + len(s.samples) == round(s.end_s * r.rate_hz)


def assert_same(a: list[Segment], b: list[Segment]) -> None:
    """Exactly equal segments: audio and times."""
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x.samples, y.samples)
        assert (x.start_s, x.end_s, x.end_of_speech_s, x.forced) == (
            y.start_s,
            y.end_s,
            y.end_of_speech_s,
            y.forced,
        )


@pytest.mark.parametrize("rate_hz", RATES_HZ)
def test_one_segment_per_utterance(rate_hz: int) -> None:
    r = rec(rate_hz)
    assert_matches_truth(run(r.samples, rate_hz), r)


@pytest.mark.parametrize("gap_s", [1.0, 2.5])
def test_short_and_long_gaps(gap_s: float) -> None:
    r = rec(16000, gap_s=gap_s)
    assert_matches_truth(run(r.samples, 16000), r)


@pytest.mark.parametrize(("rate_hz", "noise_dbfs"), [(16000, -50.0), (44100, -45.0), (8000, -45.0)])
def test_light_noise(rate_hz: int, noise_dbfs: float) -> None:
    r = rec(rate_hz, noise_dbfs=noise_dbfs)
    assert_matches_truth(run(r.samples, rate_hz), r)


@pytest.mark.parametrize(("rate_hz", "chunk_ms"), [(16000, 10), (44100, 10), (22050, 1000), (48000, 1000)])
def test_chunk_size_invariance(rate_hz: int, chunk_ms: int) -> None:
    r = rec(rate_hz, noise_dbfs=-50.0)
    whole = run(r.samples, rate_hz)
    assert len(whole) == len(TEXTS)
    assert_same(run(r.samples, rate_hz, chunk=rate_hz * chunk_ms // 1000), whole)
    assert_same(run(r.samples, rate_hz, chunk=37), whole)


@pytest.mark.parametrize("rate_hz", [22050, 16000])
def test_one_sample_chunks_and_ragged_chunks(rate_hz: int) -> None:
    r = rec(rate_hz, gap_s=1.0, n=2)
    whole = run(r.samples, rate_hz)
    assert len(whole) == 2
    assert_same(run(r.samples, rate_hz, chunk=1), whole)
    seg = Segmenter(VadConfig(), rate_hz, source="test")
    ragged: list[SegmenterOutput] = []
    rng = np.random.default_rng(1)
    i = 0
    while i < len(r.samples):
        n = int(rng.integers(0, 5000))
        ragged += seg.process(r.samples[i : i + n])
        i += n
    assert_same(final_segments(ragged + seg.flush()), whole)


def test_forced_cut_at_max_segment() -> None:
    rate_hz = 16000
    max_segment_s = 1.0
    r = rec(rate_hz, n=2)
    config = VadConfig(max_segment_s=max_segment_s)
    segments = run(r.samples, rate_hz, config=config)
    assert_same(run(r.samples, rate_hz, chunk=160, config=config), segments)
    assert all(len(s.samples) <= max_segment_s * rate_hz for s in segments)
    assert any(s.forced for s in segments)
    (true_start_s, true_end_s) = r.spans_s[1]
    second = [s for s in segments if s.start_s >= r.spans_s[0][1]]
    # A long utterance comes out in pieces: a forced cut continues back to back; a cut that
    # falls in a pause ends the piece there (normally) and the next word opens a new one.
    assert second[0].forced
    assert second[0].start_s == pytest.approx(true_start_s, abs=TOLERANCE_S)
    assert not second[-1].forced
    assert second[-1].end_of_speech_s == pytest.approx(true_end_s, abs=TOLERANCE_S)
    for a, b in pairwise(second):
        assert a.end_s <= b.start_s
        if a.forced:
            assert b.start_s == a.end_s
            np.testing.assert_array_equal(
                np.concatenate([a.samples, b.samples]),
                r.samples[round(a.start_s * rate_hz) : round(b.end_s * rate_hz)],
            )


def test_flush_mid_speech_emits_segment_and_resets() -> None:
    r = rec(16000, n=1)
    (true_start_s, true_end_s) = r.spans_s[0]
    cut = round((true_start_s + true_end_s) / 2 * 16000)
    seg = Segmenter(VadConfig(), 16000, source="test")
    assert final_segments(seg.process(r.samples[:cut])) == []
    (segment,) = final_segments(seg.flush())
    assert segment.end_s == segment.end_of_speech_s == cut / 16000
    assert abs(segment.start_s - true_start_s) <= TOLERANCE_S
    assert seg.flush() == []
    # After flush the stream starts again at sample 0.
    assert_same(final_segments(seg.process(r.samples) + seg.flush()), run(r.samples, 16000))


def test_empty_input() -> None:
    seg = Segmenter(VadConfig(), 16000)
    assert seg.process(np.zeros(0, np.float32)) == []
    assert seg.flush() == []
    assert run(np.zeros(0, np.float32), 44100) == []


@pytest.mark.parametrize("rate_hz", [16000, 44100])
@pytest.mark.parametrize("level_dbfs", [None, -60.0])
def test_silence_gives_nothing_and_holds_only_preroll(rate_hz: int, level_dbfs: float | None) -> None:
    config = VadConfig()
    seg = Segmenter(config, rate_hz)
    rng = np.random.default_rng(0)
    for _ in range(5):
        if level_dbfs is None:
            second = np.zeros(rate_hz, np.float32)
        else:
            second = (10 ** (level_dbfs / 20) * rng.standard_normal(rate_hz)).astype(np.float32)
        assert seg.process(second) == []
        held_ms = seg.buffered_samples * 1000 / rate_hz
        assert held_ms <= config.preroll_ms + 2 * config.frame_ms
    assert seg.flush() == []


def test_short_speech_is_dropped() -> None:
    r = rec(16000, n=2)
    assert run(r.samples, 16000, config=VadConfig(min_speech_ms=5000)) == []


def test_non_finite_and_loud_input_do_not_crash() -> None:
    r = rec(16000, n=2)
    x = r.samples.copy()
    x[100:200] = np.nan
    x[300] = np.inf
    x[400] = -np.inf
    seg = Segmenter(VadConfig(), 16000)
    got = final_segments(seg.process(x) + seg.flush())
    clean = r.samples.copy()
    clean[[300, 400]] = 0.0
    clean[100:200] = 0.0
    assert_same(got, run(clean, 16000))
    assert len(run(r.samples * 40.0, 16000)) == 2


def test_rejects_multichannel_or_integer_chunks() -> None:
    seg = Segmenter(VadConfig(), 16000)
    with pytest.raises(ValueError, match="1-D float"):
        seg.process(np.zeros((160, 2), np.float32))
    with pytest.raises(ValueError, match="1-D float"):
        seg.process(np.zeros(160, np.int16))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"aggressiveness": 4},
        {"aggressiveness": -1},
        {"frame_ms": 25},
        {"start_ms": 0},
        {"hangover_ms": -30},
        {"preroll_ms": -1},
        {"min_speech_ms": 1.5},
        {"tail_ms": 600, "hangover_ms": 300},
        {"max_segment_s": 0.5},
        {"max_segment_s": 600.0},
        {"max_segment_s": float("nan")},
        {"aggressiveness": True},
        {"confident_hangover_ms": 240, "speculative": False},
        {"confident_hangover_ms": 100},  # not longer than tail_ms
        {"confident_hangover_ms": 480},  # not shorter than the hangover
        {"confident_score": 1.5},
    ],
)
def test_invalid_config_raises(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError, match=r"vad\."):
        VadConfig(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("rate_hz", [0, 500, 1_000_000])
def test_invalid_rate_raises(rate_hz: int) -> None:
    with pytest.raises(ConfigError, match="sample rate"):
        Segmenter(VadConfig(), rate_hz)


@pytest.mark.parametrize(
    "config",
    [
        VadConfig(aggressiveness=3, frame_ms=10, start_ms=30, hangover_ms=100, tail_ms=60, preroll_ms=0),
        VadConfig(aggressiveness=0, frame_ms=20, tail_ms=0, min_speech_ms=0, max_segment_s=0.85),
        VadConfig(frame_ms=30, start_ms=100, hangover_ms=200, preroll_ms=300, max_segment_s=0.7),
    ],
)
def test_invariants_hold_for_other_configs(config: VadConfig) -> None:
    r = rec(22050, noise_dbfs=-50.0, n=2)
    segments = run(r.samples, r.rate_hz, config=config)
    assert segments
    assert_same(run(r.samples, r.rate_hz, chunk=441, config=config), segments)
    assert_same(run(r.samples, r.rate_hz, chunk=37, config=config), segments)
    for a, b in pairwise(segments):
        assert a.end_s <= b.start_s
    for s in segments:
        assert len(s.samples) <= config.max_segment_s * r.rate_hz
        assert s.start_s < s.end_of_speech_s <= s.end_s


def test_speculation_announces_each_segment_with_its_final_samples() -> None:
    r = rec(16000, noise_dbfs=-50.0)
    config = VadConfig()
    plain = run(r.samples, 16000, config=dataclasses.replace(config, speculative=False))
    assert len(plain) == len(TEXTS)
    # Fed in 10 ms chunks, noting how much audio had arrived when each output came out.
    seg = Segmenter(config, 16000, source="test")
    chunk = 160
    timed: list[tuple[float, SegmenterOutput]] = []
    for i in range(0, len(r.samples), chunk):
        fed_s = min(i + chunk, len(r.samples)) / 16000
        timed += [(fed_s, out) for out in seg.process(r.samples[i : i + chunk])]
    timed += [(len(r.samples) / 16000, out) for out in seg.flush()]
    announced_at = {id(out.segment): t for t, out in timed if isinstance(out, Tentative)}
    confirmed = [(t, out) for t, out in timed if isinstance(out, Segment)]
    assert_same([s for _, s in confirmed], plain)
    early_s = (config.hangover_ms - config.tail_ms - config.frame_ms) / 1000
    for t_confirmed, final in confirmed:
        # Announced with the very samples the hangover confirmed, hangover - tail earlier.
        t_announced = announced_at[id(final)]
        assert t_confirmed - t_announced >= early_s
        assert t_announced - final.end_s <= (config.frame_ms + 10) / 1000
    # The comma pause in "ten minutes, please" outlasts tail_ms: announced, then withdrawn.
    withdrawn = [out for _, out in timed if isinstance(out, Withdrawn)]
    assert len(announced_at) == len(confirmed) + len(withdrawn)


def describe(outs: list[SegmenterOutput]) -> list[tuple[str, float, float, float, bytes]]:
    """Each output's kind and its segment's times and samples."""
    return [
        (type(o).__name__, s.start_s, s.end_s, s.end_of_speech_s, s.samples.tobytes())
        for o in outs
        for s in [o if isinstance(o, Segment) else o.segment]
    ]


@pytest.mark.parametrize("chunk_ms", [10, 1000])
def test_speech_resuming_withdraws_the_tentative(chunk_ms: int) -> None:
    # A pause longer than tail_ms but shorter than the hangover: one segment, announced too early.
    r = speech.recording(["please freeze my card", "the one ending in four"], gap_s=0.3, lead_s=0.5)
    outs = outputs(r.samples, 16000, chunk=16 * chunk_ms)
    assert describe(outs) == describe(outputs(r.samples, 16000))
    (final,) = final_segments(outs)
    assert_same([final], run(r.samples, 16000, config=VadConfig(speculative=False)))
    withdrawn = [o.segment for o in outs if isinstance(o, Withdrawn)]
    assert withdrawn, describe(outs)
    for w in withdrawn:
        assert w.start_s == final.start_s and w.end_s < final.end_of_speech_s
    pending: Segment | None = None
    for o in outs:  # a Tentative is answered by the very next output: Withdrawn, or itself
        if pending is not None:
            assert (o.segment if isinstance(o, Withdrawn) else o) is pending
            pending = None
        elif isinstance(o, Tentative):
            pending = o.segment
    assert pending is None


@pytest.mark.parametrize(("gap_s", "segments"), [(0.7, 1), (1.6, 2)])
def test_a_short_afterthought_right_after_a_request_is_no_new_segment(gap_s: float, segments: int) -> None:
    r = speech.recording(["check my balance please", "thanks"], rate_hz=16000, gap_s=gap_s)
    got = run(r.samples, 16000)
    assert len(got) == segments  # within followup_gap_ms "thanks" is too short; later it stands
    assert got[0].start_s <= r.spans_s[0][0] and got[0].end_of_speech_s >= r.spans_s[0][1] - TOLERANCE_S
    assert len(run(r.samples, 16000, config=VadConfig(followup_min_speech_ms=0))) == 2  # off


def test_a_whole_request_right_after_another_is_kept() -> None:
    r = speech.recording(["check my balance please", "freeze my card"], rate_hz=16000, gap_s=0.7)
    assert_matches_truth(run(r.samples, 16000), r)


CONFIDENT = VadConfig(confident_hangover_ms=240)


def cut_after_pause(
    samples: np.ndarray, confident: bool | None, wait: bool = False, settle_after_s: float = 0.0
) -> tuple[float, Segment]:
    """Feed 10 ms chunks until the first Segment: the pause (s) fed by then, and the Segment.

    Each Tentative's verdict is settled as `confident` (None: never), at once or from another
    thread after `settle_after_s`, as the runner's worker would.
    """
    seg = Segmenter(CONFIDENT, 16000, source="test", wait_for_verdicts=wait)
    for i in range(0, len(samples), 160):
        for out in seg.process(samples[i : i + 160]):
            if isinstance(out, Segment):
                return (i + 160) / 16000 - out.end_of_speech_s, out
            if isinstance(out, Tentative) and confident is not None:
                if settle_after_s:
                    threading.Timer(settle_after_s, out.verdict.settle, (confident,)).start()
                else:
                    out.verdict.settle(confident)
    raise AssertionError("no segment")


def test_a_confident_verdict_ends_the_segment_after_the_shorter_pause() -> None:
    r = speech.recording(["check my balance please"], gap_s=1.5, lead_s=0.5)
    pause_s, confident = cut_after_pause(r.samples, confident=True)
    assert CONFIDENT.confident_hangover_ms / 1000 <= pause_s < (CONFIDENT.confident_hangover_ms + 40) / 1000
    for unsure in (False, None):  # not confident, or no verdict yet: the full hangover
        pause_s, final = cut_after_pause(r.samples, confident=unsure)
        assert describe([final]) == describe([confident])  # the same segment, only later
        assert pause_s >= CONFIDENT.hangover_ms / 1000


def test_a_replay_waits_for_the_verdict_and_a_live_stream_does_not() -> None:
    r = speech.recording(["check my balance please"], gap_s=1.5, lead_s=0.5)
    pause_s, _ = cut_after_pause(r.samples, confident=True, wait=True, settle_after_s=0.3)
    assert pause_s < CONFIDENT.hangover_ms / 1000  # waited for the verdict, then cut early
    pause_s, _ = cut_after_pause(r.samples, confident=True, wait=False, settle_after_s=0.3)
    assert pause_s >= CONFIDENT.hangover_ms / 1000  # the 10 ms chunks outran the verdict


def replayed(samples: np.ndarray, config: VadConfig, chunk: int, settle_s: float = 0) -> list[Segment]:
    """The segments of a replay (waiting for verdicts) fed like the runner: each Tentative's
    verdict settled confident by a worker, and undecided frames taken up before the next chunk."""
    seg = Segmenter(config, 16000, source="test", wait_for_verdicts=True)
    outs: list[SegmenterOutput] = []
    for i in range(0, len(samples), chunk):
        new = seg.process(samples[i : i + chunk])
        while new:
            for out in new:
                if isinstance(out, Tentative):
                    threading.Timer(settle_s, out.verdict.settle, (True,)).start()
            outs += new
            new = seg.process(np.zeros(0, np.float32)) if seg.undecided else []
    return final_segments(outs + seg.flush())


def test_a_replay_hands_out_each_tentative_before_waiting_for_its_verdict(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Chunks of 3 s hold the pause's Tentative and its confident frame alike: the segmenter must
    # return the Tentative (for the worker to judge) before it waits at that frame.
    monkeypatch.setattr(vad, "VERDICT_WAIT_S", 2.0)
    r = speech.recording(["please freeze my card", "the one ending in four"], gap_s=0.3, lead_s=0.5)
    assert len(replayed(r.samples, CONFIDENT, chunk=48000)) == 2  # cut at the pause, as live would


@pytest.mark.parametrize(("tail_ms", "confident_ms"), [(120, 240), (100, 110)])
def test_a_replay_cuts_the_same_whatever_the_chunks_and_worker_speed(tail_ms: int, confident_ms: int) -> None:
    # 100 and 110 ms round to the same 30 ms frame: the replay then waits at the frame after.
    config = VadConfig(tail_ms=tail_ms, confident_hangover_ms=confident_ms)
    r = speech.recording(["please freeze my card", "the one ending in four"], gap_s=0.3)
    fast = describe(replayed(r.samples, config, chunk=1600))
    assert len(fast) == 2  # cut at the pause
    assert describe(replayed(r.samples, config, chunk=1600, settle_s=0.2)) == fast
    assert describe(replayed(r.samples, config, chunk=len(r.samples), settle_s=0.2)) == fast


def test_a_confident_cut_splits_a_pause_the_full_hangover_bridges() -> None:
    # 0.3 s inside one request: bridged by the 480 ms hangover, cut by a 240 ms confident one.
    r = speech.recording(["please freeze my card", "the one ending in four"], gap_s=0.3, lead_s=0.5)
    seg = Segmenter(CONFIDENT, 16000, source="test")
    cuts: list[Segment] = []
    for i in range(0, len(r.samples), 160):
        for out in seg.process(r.samples[i : i + 160]):
            if isinstance(out, Tentative):
                out.verdict.settle(True)
            elif isinstance(out, Segment):
                cuts.append(out)
    cuts += final_segments(seg.flush())
    assert len(cuts) == 2 and cuts[0].end_s <= cuts[1].start_s
    assert len(run(r.samples, 16000, chunk=160, config=CONFIDENT)) == 1  # verdicts never settled
