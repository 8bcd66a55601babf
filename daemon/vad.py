"""Voice-activity segmenter: cuts a stream of source-rate audio into utterances with webrtcvad.

With `speculative` on, the segmenter also says early what it is about to cut: once a pause has
lasted `tail_ms`, every sample of the segment it would close is known, so it emits a `Tentative`
with that segment. What follows for the source is exactly one of: the same `Segment` (the
hangover confirmed it) or a `Withdrawn` (speech resumed first). The final segments are the same
with speculation on or off; the runner uses the head start to classify during the hangover.

With `confident_hangover_ms` set as well, a shorter pause ends the segment when the model is sure
of it: the runner settles each Tentative's `Verdict` once the worker has scored it, and a pause of
`confident_hangover_ms` after a confident verdict confirms the Tentative at once instead of after
the full hangover. Live sources look at the verdict frame by frame and never wait for it; a file
replayed faster than real time waits for it (`wait_for_verdicts`), so a replay cuts where a live
daemon whose model keeps up would, and cuts the same every time.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import webrtcvad

from intentd.audio import MAX_RATE_HZ, MIN_RATE_HZ
from intentd.errors import ConfigError
from intentd.resample import resample
from intentd.segment import Segment, SegmenterOutput, Tentative, Withdrawn

log = logging.getLogger(__name__)

# Rates webrtcvad takes directly; any other source rate is judged on a 16 kHz copy.
WEBRTC_RATES_HZ = (8000, 16000, 32000, 48000)
WEBRTC_FALLBACK_RATE_HZ = 16000
WEBRTC_FRAME_MS = (10, 20, 30)
MAX_AGGRESSIVENESS = 3
INT16_FULL_SCALE = 32767.0
# A segment is held in memory whole; this caps what max_segment_s may ask for.
MAX_SEGMENT_LIMIT_S = 60.0
INITIAL_BUFFER_SAMPLES = 1 << 14
# How long a replay waits for the model's verdict on a Tentative before going on without it.
VERDICT_WAIT_S = 30.0


@dataclass(frozen=True)
class VadConfig:
    """How speech is detected and cut; times are rounded up to whole VAD frames."""

    aggressiveness: int = 2  # webrtcvad mode, 0 (keeps most) to 3 (rejects most non-speech)
    frame_ms: int = 30  # one VAD decision per frame: 10, 20 or 30
    start_ms: int = 120  # consecutive voiced audio needed to open a segment
    hangover_ms: int = 480  # unvoiced audio that closes a segment: the end-of-speech latency
    preroll_ms: int = 200  # audio kept before the first voiced frame
    tail_ms: int = 120  # audio kept after the last voiced frame (taken from the hangover)
    min_speech_ms: int = 250  # segments with less speech (first to last voiced frame) are dropped
    # Speech that starts within followup_gap_ms of the previous segment's end of speech is held
    # to followup_min_speech_ms: a caller's "thank you" after a pause is not a new request
    # (festival's ked paused past the hangover before it in 44 of 336 held-out requests, each
    # then a second event with a made-up intent). 0 turns it off.
    followup_gap_ms: int = 1000
    followup_min_speech_ms: int = 700
    max_segment_s: float = 10.0  # longer speech is cut into pieces of at most this length
    speculative: bool = True  # emit Tentative/Withdrawn outputs as well (see the module docstring)
    # A pause this long ends the segment when the model's speculative result scored at least
    # confident_score (the module docstring); 0 turns it off, and every segment waits out the
    # full hangover. Needs speculative.
    confident_hangover_ms: int = 0
    confident_score: float = 0.9

    def __post_init__(self) -> None:
        if not _is_int(self.aggressiveness) or not 0 <= self.aggressiveness <= MAX_AGGRESSIVENESS:
            raise ConfigError(f"vad.aggressiveness must be 0-3, got {self.aggressiveness!r}")
        if not _is_int(self.frame_ms) or self.frame_ms not in WEBRTC_FRAME_MS:
            raise ConfigError(f"vad.frame_ms must be 10, 20 or 30, got {self.frame_ms!r}")
        for name in ("start_ms", "hangover_ms"):
            value = getattr(self, name)
            if not _is_int(value) or value <= 0:
                raise ConfigError(f"vad.{name} must be a positive whole number, got {value!r}")
        for name in (
            "preroll_ms",
            "tail_ms",
            "min_speech_ms",
            "followup_gap_ms",
            "followup_min_speech_ms",
            "confident_hangover_ms",
        ):
            value = getattr(self, name)
            if not _is_int(value) or value < 0:
                raise ConfigError(f"vad.{name} must be a whole number >= 0, got {value!r}")
        if not isinstance(self.speculative, bool):
            raise ConfigError(f"vad.speculative must be true or false, got {self.speculative!r}")
        if self.tail_ms > self.hangover_ms:
            raise ConfigError(
                f"vad.tail_ms ({self.tail_ms}) must not exceed vad.hangover_ms ({self.hangover_ms})"
            )
        if self.confident_hangover_ms:
            if not self.speculative:
                raise ConfigError("vad.confident_hangover_ms needs vad.speculative = true")
            if not self.tail_ms < self.confident_hangover_ms < self.hangover_ms:
                raise ConfigError(
                    f"vad.confident_hangover_ms must be 0 or between vad.tail_ms ({self.tail_ms}) "
                    f"and vad.hangover_ms ({self.hangover_ms}), got {self.confident_hangover_ms}"
                )
        if not _is_number(self.confident_score) or not 0.0 <= self.confident_score <= 1.0:
            raise ConfigError(f"vad.confident_score must be from 0 to 1, got {self.confident_score!r}")
        # Room for the pre-roll, the trigger run, one more frame and the hangover, so that a
        # segment can open and close before it must be cut.
        needed_ms = self.preroll_ms + self.start_ms + self.frame_ms + self.hangover_ms
        max_ms = self.max_segment_s * 1000 if _is_number(self.max_segment_s) else math.nan
        if not needed_ms < max_ms <= MAX_SEGMENT_LIMIT_S * 1000:
            raise ConfigError(
                f"vad.max_segment_s must be more than preroll+start+frame+hangover ({needed_ms} ms) "
                f"and at most {MAX_SEGMENT_LIMIT_S:g} s, got {self.max_segment_s!r}"
            )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class _SampleBuffer:
    """A growable window [start, end) of a stream's samples, addressed by absolute index."""

    def __init__(self) -> None:
        self._data = np.zeros(INITIAL_BUFFER_SAMPLES, np.float32)
        self._head = 0  # index in _data of absolute sample `start`
        self._tail = 0
        self.start = 0

    @property
    def end(self) -> int:
        """Absolute index just past the last sample received."""
        return self.start + self._tail - self._head

    def append(self, x: np.ndarray) -> None:
        """Add samples at the end; amortised O(len(x)) whatever the chunk size."""
        live = self._tail - self._head
        if self._tail + len(x) > len(self._data):
            needed = live + len(x)
            capacity = len(self._data)
            if 2 * needed <= capacity <= 4 * max(needed, INITIAL_BUFFER_SAMPLES):
                self._data[:live] = self._data[self._head : self._tail]
            else:
                # Grow, or shrink back after one huge chunk, so memory follows what is held.
                resized = np.zeros(max(2 * needed, INITIAL_BUFFER_SAMPLES), np.float32)
                resized[:live] = self._data[self._head : self._tail]
                self._data = resized
            self._head, self._tail = 0, live
        self._data[self._tail : self._tail + len(x)] = x
        self._tail += len(x)

    def drop_before(self, pos: int) -> None:
        """Forget samples before absolute index `pos` (no-op for positions already gone)."""
        n = min(pos, self.end) - self.start
        if n > 0:
            self._head += n
            self.start += n

    def view(self, a: int, b: int) -> np.ndarray:
        """Samples [a, b) by absolute index, without copying."""
        if a < self.start or b > self.end:
            raise IndexError(f"samples {a}-{b} not held (holding {self.start}-{self.end})")
        return self._data[self._head + a - self.start : self._head + b - self.start]


class Segmenter:
    """Streaming stage: float32 mono chunks of any size in, speech Segments out.

    Frames lie on a fixed clock (frame k starts at source sample floor(k*frame*rate/vad_rate)),
    so every decision depends only on absolute sample positions and the output is identical
    whatever the chunk sizes. Non-finite input samples are replaced by 0.0 (counted and logged
    once per stream): one glitch from a device should not kill a live stream. After a forced
    cut the speech goes on in a new segment starting at the cut, held to min_speech_ms like any.
    With `config.speculative`, Tentative and Withdrawn outputs come in between the Segments.
    `wait_for_verdicts`: the stream is not live (a file replayed as fast as read), so a confident
    hangover waits for the model's verdict instead of going on without it.
    """

    def __init__(
        self, config: VadConfig, rate_hz: int, source: str = "", wait_for_verdicts: bool = False
    ) -> None:
        if not _is_int(rate_hz) or not MIN_RATE_HZ <= rate_hz <= MAX_RATE_HZ:
            raise ConfigError(
                f"{source or 'source'}: sample rate {rate_hz!r} Hz is outside {MIN_RATE_HZ}-{MAX_RATE_HZ} Hz"
            )
        self.config = config
        self.rate_hz = rate_hz
        self.source = source
        self._vad = webrtcvad.Vad(config.aggressiveness)
        self._vad_rate_hz = rate_hz if rate_hz in WEBRTC_RATES_HZ else WEBRTC_FALLBACK_RATE_HZ
        self._frame_len = config.frame_ms * self._vad_rate_hz // 1000  # on the VAD clock
        self._start_frames = math.ceil(config.start_ms / config.frame_ms)
        self._hangover_frames = math.ceil(config.hangover_ms / config.frame_ms)
        self._confident_frames = math.ceil(config.confident_hangover_ms / config.frame_ms)
        self._verdict_wait_s = VERDICT_WAIT_S if wait_for_verdicts else 0.0
        self._preroll = config.preroll_ms * rate_hz // 1000
        self._tail = config.tail_ms * rate_hz // 1000
        self._min_speech = config.min_speech_ms * rate_hz // 1000
        self._followup_gap = config.followup_gap_ms * rate_hz // 1000
        self._followup_min_speech = max(self._min_speech, config.followup_min_speech_ms * rate_hz // 1000)
        self._max_samples = int(config.max_segment_s * rate_hz)
        self.reset()

    def reset(self) -> None:
        """Forget everything; the next sample is sample 0 of a new stream."""
        self._buf = _SampleBuffer()
        self._next_frame = 0
        self._in_speech = False
        self._voiced_run = 0  # consecutive voiced frames while waiting for speech
        self._unvoiced_run = 0  # consecutive unvoiced frames inside a segment
        self._seg_start = 0
        self._speech_start = 0
        self._floor = 0  # end of the last segment: the next may not start before it
        self._last_speech_end: int | None = None  # end of speech of the last segment emitted
        self._needed_speech = self._min_speech  # what the open segment must reach to be kept
        self._tentative: Tentative | None = None  # announced, neither confirmed nor withdrawn yet
        self._handed_out = False  # the caller has the Tentative (a replay may wait for its verdict)
        self._waited = False  # a replay waits for a Tentative's verdict once
        self.nonfinite_samples = 0

    @property
    def buffered_samples(self) -> int:
        """Samples held now: the pre-roll ring in silence, the open segment in speech."""
        return self._buf.end - self._buf.start

    def process(self, samples: np.ndarray) -> list[SegmenterOutput]:
        """Take the next chunk; return what it completes, in order: Segments, Tentatives, Withdrawns."""
        x = np.asarray(samples)
        if x.ndim != 1 or x.dtype.kind != "f":
            # Integer PCM would pass as wildly loud floats; audio.to_mono_float32 converts it.
            raise ValueError(f"Segmenter takes 1-D float mono audio, got {x.dtype} of shape {x.shape}")
        x = x.astype(np.float32, copy=False)
        bad = ~np.isfinite(x)
        if bad.any():
            if self.nonfinite_samples == 0:
                log.warning("%s: non-finite audio samples replaced by silence", self.source)
            self.nonfinite_samples += int(bad.sum())
            x = np.where(bad, np.float32(0.0), x)
        self._buf.append(x)
        # Empty chunks too: they decide the frames a replay's Tentative left undecided.
        return self._step_all(handing_out=True)

    @property
    def undecided(self) -> bool:
        """Complete frames wait for the next call: a replay handed out a Tentative before them."""
        return self._boundary(self._next_frame + 1) <= self._buf.end

    def _step_all(self, handing_out: bool) -> list[SegmenterOutput]:
        """Decide every complete frame received; with `handing_out`, a replay's Tentative stops it."""
        out: list[SegmenterOutput] = []
        self._handed_out = self._tentative is not None  # returned by the call before
        while self.undecided:
            self._step(out)
            if handing_out and self._verdict_wait_s and out and isinstance(out[-1], Tentative):
                # A verdict can only come once the caller has the Tentative: the frames after it
                # wait for the next call (the next chunk, or flush).
                break
        return out

    def flush(self) -> list[SegmenterOutput]:
        """End of stream: emit the segment in progress if long enough (confirming a Tentative); reset."""
        out = self._step_all(handing_out=False)  # frames a replay's Tentative left undecided
        if self._in_speech:
            received = self._buf.end
            if self._unvoiced_run == 0:
                # Speech ran to the end; the undecided partial frame belongs to it.
                speech_end = received
            else:
                speech_end = self._boundary(self._next_frame - self._unvoiced_run)
            self._finish(out, min(speech_end + self._tail, received), speech_end)
        self.reset()
        return out

    def _boundary(self, k: int) -> int:
        """First source sample of frame k."""
        return k * self._frame_len * self.rate_hz // self._vad_rate_hz

    def _is_speech(self, frame: np.ndarray) -> bool:
        if self._vad_rate_hz != self.rate_hz:
            # Converted frame by frame so the decision depends on this frame's samples alone.
            frame = resample(frame, self.rate_hz, self._vad_rate_hz)[: self._frame_len]
            if len(frame) < self._frame_len:
                frame = np.pad(frame, (0, self._frame_len - len(frame)))
        pcm = (np.clip(frame, -1.0, 1.0) * INT16_FULL_SCALE).astype(np.int16)
        return self._vad.is_speech(pcm.tobytes(), self._vad_rate_hz)

    def _step(self, out: list[SegmenterOutput]) -> None:
        k = self._next_frame
        frame_start, frame_end = self._boundary(k), self._boundary(k + 1)
        voiced = self._is_speech(self._buf.view(frame_start, frame_end))
        self._next_frame = k + 1
        if not self._in_speech:
            self._voiced_run = self._voiced_run + 1 if voiced else 0
            run_start = self._boundary(self._next_frame - self._voiced_run)
            if self._voiced_run < self._start_frames:
                self._buf.drop_before(max(run_start - self._preroll, self._floor))
                return
            self._in_speech = True
            self._unvoiced_run = 0
            self._speech_start = run_start
            self._seg_start = max(run_start - self._preroll, self._floor)
            last = self._last_speech_end
            followup = last is not None and run_start - last < self._followup_gap
            self._needed_speech = self._followup_min_speech if followup else self._min_speech
            log.debug("%s: speech from %.2f s", self.source, run_start / self.rate_hz)
        elif voiced:
            self._unvoiced_run = 0
            if self._tentative is not None:
                out.append(Withdrawn(self._tentative.segment))
                self._tentative = None
        else:
            self._unvoiced_run += 1
        speech_end = self._boundary(self._next_frame - self._unvoiced_run)
        if self._unvoiced_run >= self._hangover_frames or self._confident_end():
            self._close(out, min(speech_end + self._tail, frame_end), speech_end)
            return
        if self._boundary(self._next_frame + 1) - self._seg_start > self._max_samples:
            # The next frame would overflow max_segment_s: end at the pause if one has begun,
            # else cut here and carry on with a new segment.
            if self._unvoiced_run > 0:
                self._close(out, min(speech_end + self._tail, frame_end), speech_end)
                self._last_speech_end = None  # cut for length, not ended: what follows is no follow-up
                return
            out.append(self._cut(frame_end, frame_end, forced=True))
            self._seg_start = self._speech_start = self._floor = frame_end
            self._needed_speech = self._min_speech  # the rest of a long utterance, not a follow-up
            self._last_speech_end = frame_end
            self._buf.drop_before(frame_end)
            return
        if (
            self.config.speculative
            and self._unvoiced_run > 0
            and self._tentative is None
            and speech_end + self._tail <= frame_end
            and self._long_enough(speech_end)
        ):
            # The pause has lasted tail_ms: if it lasts the hangover, the segment ends exactly here.
            self._tentative = Tentative(self._cut(speech_end + self._tail, speech_end, forced=False))
            self._handed_out = self._waited = False
            out.append(self._tentative)

    def _confident_end(self) -> bool:
        """The pause has lasted confident_hangover_ms and the model is sure of the Tentative."""
        if self._tentative is None or not self._confident_frames:
            return False
        if self._unvoiced_run < self._confident_frames:
            return False
        # A replay waits once, at the first frame that may end the segment after the caller has
        # the Tentative (never for one made in flush, which the caller cannot have yet).
        wait_s = 0.0
        if self._handed_out and not self._waited:
            wait_s, self._waited = self._verdict_wait_s, True
        self._tentative.verdict.cut_short = self._tentative.verdict.confident(wait_s)
        return self._tentative.verdict.cut_short

    def _close(self, out: list[SegmenterOutput], end: int, speech_end: int) -> None:
        self._finish(out, end, speech_end)
        self._in_speech = False
        self._voiced_run = 0
        self._floor = end
        self._buf.drop_before(max(end, self._boundary(self._next_frame) - self._preroll))

    def _finish(self, out: list[SegmenterOutput], end: int, speech_end: int) -> None:
        """Emit the segment ending at `end` if it has enough speech, answering any Tentative."""
        announced, self._tentative = self._tentative, None
        tentative = None if announced is None else announced.segment
        if tentative is not None and self._seg_start + tentative.samples.size == end:
            out.append(tentative)  # the confirmation is the announced segment itself
            self._last_speech_end = speech_end
            return
        if tentative is not None:
            # Not reached with these cut rules (a pause always ends at speech_end + tail, which
            # the Tentative already covered); kept so that every Tentative gets its answer.
            out.append(Withdrawn(tentative))
        if self._long_enough(speech_end):
            out.append(self._cut(end, speech_end, forced=False))
            self._last_speech_end = speech_end
        else:
            log.debug(
                "%s: dropped %.2f s of speech at %.2f s (under %s)",
                self.source,
                (speech_end - self._speech_start) / self.rate_hz,
                self._speech_start / self.rate_hz,
                "min_speech_ms" if self._needed_speech == self._min_speech else "followup_min_speech_ms",
            )

    def _long_enough(self, speech_end: int) -> bool:
        return speech_end - self._speech_start >= self._needed_speech

    def _cut(self, end: int, speech_end: int, forced: bool) -> Segment:
        rate = self.rate_hz
        log.debug("%s: segment %.2f-%.2f s", self.source, self._seg_start / rate, end / rate)
        return Segment(
            samples=self._buf.view(self._seg_start, end).copy(),
            rate_hz=rate,
            start_s=self._seg_start / rate,
            end_s=end / rate,
            end_of_speech_s=speech_end / rate,
            source=self.source,
            forced=forced,
        )
