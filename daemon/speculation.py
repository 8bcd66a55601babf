"""Speculative classification: results of Tentative segments, held until the segmenter confirms them.

With `vad.speculative` on, the segmenter announces a segment (`vad.Tentative`) as soon as its last
sample is known, `hangover_ms - tail_ms` before the hangover confirms it. The runner queues it for
the worker at once, so the model runs while the hangover is still being waited out. Then, per
speculation, two things happen in either order: the worker finishes it (`finish`), and the audio
thread sees the segmenter's answer, a confirmation (`confirm`) or a `Withdrawn` (`withdraw`).
A confirmed result is released exactly once, when both have happened; a withdrawn one never is.

Ordering: a segmenter answers its Tentative before it outputs anything later in the stream, so
every later job of the source is queued after the answer, and the worker releases results in
queue order. Releasing under the lock keeps the two releasing threads from overtaking each other.

The confirmed result is the one the segment would have got without speculation: the confirming
Segment is the announced object itself, so the model saw the same samples.

`finish` also settles the Tentative's Verdict (confident: the top score reached `confident_score`),
which lets a segmenter with `vad.confident_hangover_ms` confirm it before the full hangover.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace

from intentd.publisher import Result
from intentd.segment import Segment, Tentative, Verdict

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Speculation:
    """One Tentative segment's classification, from queueing until it is released or dropped."""

    segment: Segment
    verdict: Verdict
    cut_at: float | None = None  # time.monotonic() of the confirmation
    withdrawn: bool = False
    done: bool = False  # the worker has finished it (result None: the model failed on it)
    result: Result | None = None


class Speculations:
    """The speculations in flight, shared by the audio threads and the worker (thread-safe).

    `release` gets every confirmed outcome once, in order: a Result to publish, or None when the
    model failed on the segment.
    """

    def __init__(self, release: Callable[[Result | None], None], confident_score: float = 1.0) -> None:
        self._release = release
        self._confident_score = confident_score
        self._lock = threading.Lock()
        self._open: dict[str, Speculation] = {}  # by source: a segmenter has one Tentative out at most
        self._started = 0
        self._discarded = 0
        self._cut_short = 0

    def start(self, tentative: Tentative) -> Speculation:
        """Register a Tentative segment about to be queued for the worker."""
        spec = Speculation(tentative.segment, tentative.verdict)
        with self._lock:
            self._open[spec.segment.source] = spec
            self._started += 1
        return spec

    def withdraw(self, segment: Segment) -> None:
        """Speech resumed: never publish this speculation (the worker skips it if not yet started)."""
        with self._lock:
            spec = self._open.get(segment.source)
            if spec is None or spec.segment is not segment:
                return
            del self._open[segment.source]
            spec.withdrawn = True
            spec.result = None
            self._discarded += 1
        log.debug("%s: speculation at %.2f s withdrawn", segment.source, segment.end_s)

    def confirm(self, segment: Segment, cut_at: float) -> bool:
        """True if the cut `segment` was speculated (released now or once finished); else queue it."""
        with self._lock:
            spec = self._open.get(segment.source)
            if spec is None or spec.segment is not segment:
                return False
            del self._open[segment.source]
            self._cut_short += spec.verdict.cut_short
            spec.cut_at = cut_at
            if spec.done:
                self._release_locked(spec, cut_at)
        return True

    def wanted(self, spec: Speculation) -> bool:
        """Whether the worker should still classify it."""
        with self._lock:
            return not spec.withdrawn

    def finish(self, spec: Speculation, result: Result | None) -> None:
        """The worker's outcome: released at once if already confirmed, else held."""
        spec.verdict.settle(result is not None and result.score >= self._confident_score)
        with self._lock:
            spec.done = True
            if spec.withdrawn:
                return
            spec.result = result
            if spec.cut_at is not None:
                self._release_locked(spec, spec.cut_at)

    def _release_locked(self, spec: Speculation, cut_at: float) -> None:
        r, spec.result = spec.result, None
        # latency_ms.total runs from the cut, as for any segment: here the confirmation.
        self._release(None if r is None else replace(r, cut_at=cut_at))

    def stats(self) -> dict[str, float]:
        """Counters for heartbeats and metrics."""
        with self._lock:
            return {
                "speculations": float(self._started),
                "speculations_discarded": float(self._discarded),
                "confident_cuts": float(self._cut_short),
            }
