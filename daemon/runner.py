"""The hallway: every thread, bounded queue and the one stop event of the pipeline live here.

    source.read ─► segmenter ─► resample ─► jobs ─► worker (batches) ─► results ─► publisher
    (audio thread)                          queue   (worker thread)      queue     (publish thread)

Overflow policy. Live capture drops the *oldest* audio in the source's own bounded queue when the
audio thread falls behind (counted as the source's `queue_drops`). Once the segmenter has cut a
segment it is never dropped: a full `jobs` queue blocks the audio thread (back-pressure onto the
source queue), so every accepted segment is classified and published, also on shutdown.

Speculation (`vad.speculative`). A Tentative segment is queued like a cut one, its result held by
speculation.Speculations until the segmenter confirms it (then published at once) or withdraws it
(never published; the worker skips it if it has not started). The audio thread answers every
Tentative before anything later of its stream, so per-source order holds, and a segment counts in
`segments` (and must end in `events` or `segments_failed`) only once it is confirmed.

With `[metrics] port` set, `Pipeline.start` also starts prometheus_client's HTTP server thread
(metrics.serve, loopback by default); it reads `stats()` per scrape and stops after `supervise`.

With CURVE keys configured, one more thread runs: pyzmq's ZAP authenticator (security.CurveServer).
It must outlive every socket it guards, so cli._run_pipeline starts it before the first bind and
stops it after the pipeline is done; the Pipeline only passes it to the Publisher.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from intentd import metrics
from intentd.audio import Chunk
from intentd.config import Config
from intentd.errors import AudioDeviceError, IntentdError
from intentd.model import Classifier, batch_groups
from intentd.notify import Notifier, WatchdogGate
from intentd.publisher import Publisher, Result
from intentd.resample import to_model_rate
from intentd.security import CurveServer
from intentd.segment import Segment, SegmenterOutput, Tentative, Withdrawn
from intentd.sources import EndOfStream, Source
from intentd.speculation import Speculation, Speculations
from intentd.vad import Segmenter
from intentd_client.protocol import IntentEvent

log = logging.getLogger(__name__)

POLL_S = 0.05  # how often blocked threads look at the stop event
STATUS_PERIOD_S = 1.0  # how often the supervisor refreshes STATUS= (and pings, without a watchdog)
DEFAULT_MAX_STALL_S = 10.0  # no frames, or one batch running, this long means the pipeline is stuck
# This many failed batches in a row (a broken model, not one odd input) withholds watchdog pings.
MAX_CONSECUTIVE_BATCH_FAILURES = 3
RECOVER_FIRST_BACKOFF_S = 0.5
RECOVER_MAX_BACKOFF_S = 5.0
NO_SAMPLES = np.zeros(0, np.float32)


@dataclass(frozen=True)
class Job:
    """A cut (or tentative) utterance, resampled to 16 kHz, waiting for the worker."""

    samples: np.ndarray
    source: str
    start_s: float
    end_s: float
    queued_at: float
    speculation: Speculation | None = None  # set for a Tentative segment


class Pipeline:
    """Runs one source through the segmenter, the batched worker and the publisher until stopped."""

    def __init__(
        self,
        config: Config,
        classifier: Classifier,
        sources: Sequence[Source],
        on_intent: Callable[[IntentEvent], None] | None = None,
        publish: bool = True,
        curve: CurveServer | None = None,
    ) -> None:
        if not sources:
            raise ValueError("a pipeline needs at least one source")
        self.config = config
        self.classifier = classifier
        self.sources = list(sources)
        self.run_id = uuid.uuid4().hex[:12]
        self.counters = metrics.Counters()
        self.batch_sizes = metrics.Distribution(metrics.BATCH_SIZE_BUCKETS)
        self.inference_s = metrics.Distribution(metrics.INFERENCE_S_BUCKETS)  # one per classified segment
        self._metrics: metrics.MetricsServer | None = None
        self.stop_event = threading.Event()
        self.error: IntentdError | None = None
        self._jobs: queue.Queue[Job] = queue.Queue(maxsize=config.queues.segment_max)
        self._results: queue.Queue[Result] = queue.Queue()
        self.speculations = Speculations(self._release, config.vad.confident_score)
        self._audio_running = len(self.sources)
        self._audio_lock = threading.Lock()
        self._audio_done = threading.Event()
        self._worker_done = threading.Event()
        self._reload = threading.Event()
        self.sources_down: set[str] = set()
        self._started_at = time.monotonic()
        self.gate = WatchdogGate(DEFAULT_MAX_STALL_S)
        self._failed_batches_in_a_row = 0
        self.publisher = Publisher(
            config.publish.endpoint if publish else None, self.run_id, on_intent=on_intent, curve=curve
        )
        self._threads = [
            *(
                threading.Thread(target=self._audio_loop, args=(src,), name=f"intentd-audio-{i}", daemon=True)
                for i, src in enumerate(self.sources)
            ),
            threading.Thread(target=self._worker_loop, name="intentd-worker", daemon=True),
            threading.Thread(target=self._publish_loop, name="intentd-publish", daemon=True),
        ]

    def start(self) -> None:
        """Start the threads; the source must already be open."""
        self._started_at = time.monotonic()
        if self.config.metrics.port:
            self._metrics = metrics.serve(self, self.config.metrics.address, self.config.metrics.port)
        for t in self._threads:
            t.start()
        names = ", ".join(src.name for src in self.sources)
        log.info("pipeline running: sources %s, model %s, run %s", names, self.classifier.name, self.run_id)

    def stop(self) -> None:
        """Ask for a graceful stop: capture ends, the segment in progress is cut and published."""
        self.stop_event.set()

    def wait(self, timeout_s: float | None = None) -> bool:
        """Wait until every thread has finished; True when they have."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        for t in self._threads:
            while t.is_alive():
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                t.join(POLL_S if left is None else min(POLL_S, left))
        return True

    def request_reload(self) -> None:
        """Ask the supervisor to load a new model beside the old one and swap (safe from a signal handler)."""
        self._reload.set()

    def supervise(self, notifier: Notifier, load_model: Callable[[], Classifier] | None = None) -> None:
        """Block until done, sending READY, STATUS and WATCHDOG pings only while the pipeline progresses.

        `load_model` builds and warms a new classifier when a reload is requested.
        """
        timeout_s = notifier.watchdog_timeout_s()
        if timeout_s is not None:
            self.gate = WatchdogGate(timeout_s)
        period = min(STATUS_PERIOD_S, notifier.watchdog_interval_s() or STATUS_PERIOD_S)
        notifier.ready(self._status())
        stuck_reported = False
        while not self.wait(period):
            problem = self.gate.problem() or self._worker_problem()
            if problem is None:
                notifier.watchdog()
                notifier.status(self._status())
                stuck_reported = False
            elif not stuck_reported:
                log.error("pipeline stalled: %s; withholding watchdog pings", problem)
                notifier.status(f"stalled: {problem}")
                stuck_reported = True
            if self.stop_event.is_set():
                notifier.stopping("draining: publishing the segments already cut")
            elif self._reload.is_set() and load_model is not None:
                self._reload.clear()
                notifier.reloading()
                self._swap_model(load_model)
                self.gate.reset()
                notifier.ready(self._status())
        if self._metrics is not None:
            self._metrics.close()

    def _worker_problem(self) -> str | None:
        n = self._failed_batches_in_a_row
        return f"the last {n} model batches failed" if n >= MAX_CONSECUTIVE_BATCH_FAILURES else None

    def _swap_model(self, load_model: Callable[[], Classifier]) -> None:
        """Load and warm the new model while the old one serves; swap only if it works."""
        old = self.classifier
        try:
            new = load_model()
        except Exception as e:  # a broken new model must never take down the serving one
            self.counters.add("reload_failures")
            log.error(
                "reload refused, still serving %s: %s", old.name, str(e).splitlines()[0] if str(e) else e
            )
            return
        if new.labels != old.labels:
            log.warning("reloaded model %s has other labels than %s", new.name, old.name)
        self.classifier = new  # one attribute store: the worker picks it up at its next batch
        self.counters.add("reloads")
        log.info("reloaded: now serving %s (was %s)", new.name, old.name)

    def _status(self) -> str:
        events = int(self.counters.snapshot().get("events", 0))
        down = sorted(self.sources_down)
        if down:
            return (
                f"capture lost on {', '.join(down)}, reopening; model {self.classifier.name}, {events} events"
            )
        names = ", ".join(src.name for src in self.sources)
        return f"listening on {names}, model {self.classifier.name}, {events} events"

    def stats(self) -> dict[str, float]:
        """Counters of every stage, as carried in heartbeats (source counters summed over sources)."""
        s = self.counters.snapshot() | self.speculations.stats()
        for src in self.sources:
            for k, v in src.stats().items():
                s[k] = s.get(k, 0.0) + float(v)
        s["segment_queue_depth"] = float(self._jobs.qsize())
        s["sources_down"] = float(len(self.sources_down))
        s.update(self.batch_sizes.stats("batch_size"))
        s.update(self.inference_s.stats("inference_seconds"))
        return s

    # --- audio threads (one per source) ---------------------------------------------------------
    def _audio_loop(self, source: Source) -> None:
        segmenters: dict[str, Segmenter] = {}
        try:
            while not self.stop_event.is_set():
                try:
                    chunk = source.read(POLL_S)
                except EndOfStream:
                    break
                except AudioDeviceError as e:
                    self._cut_all(segmenters)
                    if not self._recover(source, e):
                        return
                    continue
                if chunk is not None:
                    self.gate.mark_frames()
                    self._segment(segmenters, chunk, source.realtime)
        except IntentdError as e:
            self._fail(e)
        finally:
            self._cut_all(segmenters)
            source.close()
            with self._audio_lock:
                self._audio_running -= 1
                if self._audio_running == 0:
                    self._audio_done.set()

    def _segment(self, segmenters: dict[str, Segmenter], chunk: Chunk, realtime: bool) -> None:
        seg = segmenters.get(chunk.source)
        if seg is None:
            seg = segmenters[chunk.source] = Segmenter(
                self.config.vad, chunk.rate_hz, source=chunk.source, wait_for_verdicts=not realtime
            )
        for out in seg.process(chunk.samples):
            self._route(out)
        while seg.undecided:  # a replay handed out a Tentative first: on to the frames after it
            for out in seg.process(NO_SAMPLES):
                self._route(out)
        if chunk.final:
            for out in segmenters.pop(chunk.source).flush():
                self._route(out)

    def _cut_all(self, segmenters: dict[str, Segmenter]) -> None:
        """End every stream in progress: what was heard so far is still classified."""
        for seg in segmenters.values():
            for out in seg.flush():
                self._route(out)
        segmenters.clear()

    def _recover(self, source: Source, error: AudioDeviceError) -> bool:
        """Reopen a lost capture device with backoff; False (and the pipeline stops) after recover_s."""
        give_up_at = time.monotonic() + self.config.source.recover_s
        self.sources_down.add(source.name)
        self.counters.add("device_lost")
        log.error("%s", error)
        backoff_s = RECOVER_FIRST_BACKOFF_S
        while not self.stop_event.wait(backoff_s):
            # Reopening is progress: the watchdog must not kill us inside the recover_s window
            # (only a reopen that itself hangs stops the pings).
            self.gate.mark_frames()
            source.close()
            try:
                source.open()
            except AudioDeviceError as e:
                if time.monotonic() >= give_up_at:
                    self._fail(
                        AudioDeviceError(
                            f"{source.name}: not recovered after {self.config.source.recover_s:g} s: {e}"
                        )
                    )
                    return False
                log.warning("%s still unavailable, retrying in %.1f s", source.name, backoff_s)
                backoff_s = min(backoff_s * 2, RECOVER_MAX_BACKOFF_S)
                continue
            self.sources_down.discard(source.name)
            self.counters.add("device_reopens")
            log.info("%s: capture recovered", source.name)
            return True
        return False

    def _fail(self, error: IntentdError) -> None:
        """A fatal error: remember the first, stop the pipeline (the CLI prints it and exits non-zero)."""
        log.debug("stopping on %s", error)
        if self.error is None:
            self.error = error
        self.stop_event.set()

    def _route(self, out: SegmenterOutput) -> None:
        """Start or drop a speculation, or count a cut segment and queue it unless it was speculated."""
        if isinstance(out, Tentative):
            self._enqueue(out.segment, self.speculations.start(out))
        elif isinstance(out, Withdrawn):
            self.speculations.withdraw(out.segment)
        else:
            self.counters.add("segments")
            if not self.speculations.confirm(out, time.monotonic()):
                self._enqueue(out)

    def _enqueue(self, seg: Segment, speculation: Speculation | None = None) -> None:
        # Band-limited for the model loaded now; jobs queued across a reload keep the old model's
        # band (only a reload between checkpoints trained at different rates would notice).
        job = Job(
            samples=to_model_rate(seg.samples, seg.rate_hz, self.classifier.trained_rate_hz),
            source=seg.source,
            start_s=seg.start_s,
            end_s=seg.end_s,
            queued_at=time.monotonic(),
            speculation=speculation,
        )
        while True:
            try:
                self._jobs.put(job, timeout=POLL_S)
                return
            except queue.Full:
                self.counters.add("segment_queue_full_waits")

    # --- worker thread --------------------------------------------------------------------------
    def _worker_loop(self) -> None:
        try:
            while True:
                batch = self._next_batch()
                if batch is None:
                    return
                if batch:
                    self._run_batch(batch)
        finally:
            self._worker_done.set()

    def _next_batch(self) -> list[Job] | None:
        """Up to max_batch jobs, waiting at most max_wait_ms after the first; None when all done."""
        try:
            first = self._jobs.get(timeout=POLL_S)
        except queue.Empty:
            return None if self._audio_done.is_set() and self._jobs.empty() else []
        batch = [first]
        deadline = time.monotonic() + self.config.model.max_wait_ms / 1000.0
        while len(batch) < self.config.model.max_batch:
            left = deadline - time.monotonic()
            try:
                batch.append(self._jobs.get(timeout=left) if left > 0 else self._jobs.get_nowait())
            except queue.Empty:
                break
        return batch

    def _run_batch(self, batch: list[Job]) -> None:
        """Classify a batch, one model pass per length group, publishing in arrival order.

        Each group's results go out as soon as every earlier job of the batch is done, so a
        checkpoint that batches only equal lengths does not hold all results until its last pass.
        """
        batch = [j for j in batch if j.speculation is None or self.speculations.wanted(j.speculation)]
        groups = batch_groups([j.samples.size for j in batch], self.classifier.pads_batches)
        done: dict[int, Result | None] = {}
        released = 0
        for group in sorted(groups, key=min):
            for i, r in zip(group, self._classify([batch[i] for i in group]), strict=True):
                done[i] = r
            while released in done:
                spec = batch[released].speculation
                if spec is None:
                    self._release(done.pop(released))
                else:
                    self.speculations.finish(spec, done.pop(released))
                released += 1

    def _release(self, r: Result | None) -> None:
        """Hand a cut segment's outcome to the publisher; None: the model failed on it."""
        if r is None:
            self.counters.add("segments_failed")
        else:
            self._results.put(r)

    def _classify(self, jobs: list[Job]) -> list[Result | None]:
        """One model pass; None for a job whose input made the model fail."""
        started = time.monotonic()
        clf = self.classifier  # a reload may swap it meanwhile; this pass uses one model
        self.gate.mark_batch_started(started)
        try:
            preds = clf.classify([j.samples for j in jobs])
        except Exception:  # one bad batch must not take the daemon down; counted and logged
            if len(jobs) > 1:
                # One bad input must not cost its batch-mates: retry each alone, lose only it.
                log.warning("worker: batch of %d failed; retrying one at a time", len(jobs))
                return [r for job in jobs for r in self._classify([job])]
            log.exception("worker: batch of %d failed", len(jobs))
            self.counters.add("worker_errors")
            self._failed_batches_in_a_row += 1
            return [None]
        finally:
            self.gate.mark_batch_done()
        self._failed_batches_in_a_row = 0
        self.counters.add("batches")
        self.counters.max("batch_size_max", len(jobs))
        self.batch_sizes.observe(len(jobs))
        for p in preds:
            self.inference_s.observe(p.inference_ms / 1000.0)
        return [
            Result(
                source=job.source,
                intent=p.intent,
                score=p.score,
                top_k=p.top_k,
                start_s=job.start_s,
                end_s=job.end_s,
                cut_at=job.queued_at,  # a speculation's is set when the segmenter confirms it
                queue_ms=(started - job.queued_at) * 1000.0,
                inference_ms=p.inference_ms,
                model=clf.name,
            )
            for job, p in zip(jobs, preds, strict=True)
        ]

    # --- publish thread -------------------------------------------------------------------------
    def _publish_loop(self) -> None:
        period = self.config.publish.heartbeat_s
        next_heartbeat = time.monotonic()
        try:
            while True:
                now = time.monotonic()
                if now >= next_heartbeat:
                    self.publisher.publish_heartbeat(now - self._started_at, self.stats())
                    next_heartbeat = now + period
                try:
                    r = self._results.get(timeout=min(POLL_S, max(0.0, next_heartbeat - now)))
                except queue.Empty:
                    if self._worker_done.is_set() and self._results.empty():
                        return
                    continue
                self.publisher.publish_intent(r)
                self.counters.add("events")
        finally:
            self.publisher.close()
