"""What the segmenter hands on: cut segments, and with speculation the Tentatives and Withdrawals.

These are the contract between the VAD stage (`intentd.vad`) and what follows it: the resampler,
the speculation book-keeping and the runner.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Segment:
    """One utterance cut from a source: audio plus where it lies in the source's timeline.

    Times are audio seconds since the source started (sample index / rate_hz). `samples` covers
    exactly [start_s, end_s): pre-roll, speech, then up to `tail_ms` of the hangover. Successive
    segments of a source never overlap.
    """

    samples: np.ndarray  # float32 mono at rate_hz (the source rate until the resampler)
    rate_hz: int
    start_s: float  # first sample, pre-roll included
    end_s: float  # just past the last sample: end_of_speech_s plus the tail kept
    end_of_speech_s: float  # end of the last voiced frame, where the hangover began
    source: str
    forced: bool  # cut because it reached max_segment_s while speech went on


class Verdict:
    """Whether the model is confident of a Tentative's segment: settled once, by the worker."""

    def __init__(self) -> None:
        self._settled = threading.Event()
        self._confident = False
        # Set by the segmenter when this verdict ended the pause before the full hangover.
        self.cut_short = False

    def settle(self, confident: bool) -> None:
        """The worker's answer; the first one counts."""
        if not self._settled.is_set():
            self._confident = confident
            self._settled.set()

    def confident(self, wait_s: float = 0.0) -> bool:
        """True once settled as confident; waits up to `wait_s` for an answer."""
        return (self._settled.is_set() or (wait_s > 0 and self._settled.wait(wait_s))) and self._confident


@dataclass(frozen=True)
class Tentative:
    """The segment a pause will close unless speech resumes, emitted when its tail is complete."""

    segment: Segment  # the very object the confirming output will be
    verdict: Verdict = field(default_factory=Verdict, compare=False)


@dataclass(frozen=True)
class Withdrawn:
    """Speech resumed inside the hangover: the source's outstanding Tentative will not be confirmed."""

    segment: Segment  # the Tentative's segment


SegmenterOutput = Segment | Tentative | Withdrawn


def final_segments(outputs: list[SegmenterOutput]) -> list[Segment]:
    """The cut segments among a segmenter's outputs, for callers that do not speculate."""
    return [o for o in outputs if isinstance(o, Segment)]
