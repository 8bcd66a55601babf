"""The opt-in Prometheus endpoint: the heartbeat's counters and two histograms, read on each scrape.

The runner counts into `Counters`; nothing here is read until a scrape. On a scrape,
`PipelineCollector` reads `Pipeline.stats()` (the same numbers a heartbeat carries) and turns every
key into a metric: `intentd_<key>_total` for counters, `intentd_<key>` for gauges (depths, open
streams, maxima). The two histograms, batch size and inference latency, are `Distribution`s the
worker observes; their count and sum are also in the heartbeat (`batch_size_count`,
`inference_seconds_sum`, ...).

prometheus_client is imported only when the endpoint is on (`[metrics] port`), so replay, classify
and an install that never turns metrics on do not load it. Its HTTP server runs on its own thread,
started by the runner (`Pipeline.start`) through `serve()`.
"""

from __future__ import annotations

import bisect
import logging
import re
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from intentd.errors import ConfigError

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from intentd.runner import Pipeline

log = logging.getLogger(__name__)

PREFIX = "intentd"
# Batches are 1..model.max_batch (at most 1024) segments.
BATCH_SIZE_BUCKETS = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0)
# One forward pass: a few ms for a short utterance on a GPU, seconds for a CPU batch of long ones.
INFERENCE_S_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SERVER_JOIN_TIMEOUT_S = 2.0

# Stats that are levels, not running totals. Keys not listed here or matched by GAUGE_SUFFIXES
# are counters: every stage counts things that happened, and new counters need no entry.
GAUGES = frozenset({"queue_depth", "segment_queue_depth", "sources_down", "batch_size_max"})
GAUGE_SUFFIXES = ("_depth", "_open", "_max", "_down")
# Shown on every scrape, also before the first event (0), so dashboards and alerts never see
# a missing series: the ones issues #5 and #6 ask for, with their help text.
ALWAYS: dict[str, str] = {
    "frames_captured": "Audio frames captured, summed over sources (each at its own rate).",
    "input_overflows": "Capture blocks the audio device reported as overflowed (audio lost in the driver).",
    "queue_drops": "Captured blocks dropped, oldest first, because the audio queue was full.",
    "queue_depth": "Captured blocks waiting in the sources' audio queues.",
    "segments": "Utterances cut by the VAD segmenter (and queued for the model, unless speculated).",
    "segment_queue_depth": "Segments waiting for the model worker.",
    "batches": "Batches the model classified.",
    "events": "Intent events published.",
    "worker_errors": "Batches the model failed on (their cut segments are counted in segments_failed).",
    "segments_failed": "Segments lost to a failed batch.",
    "device_lost": "Times a capture device was lost.",
    "device_reopens": "Times a lost capture device was reopened.",
    "sources_down": "Sources whose capture device is lost and being reopened.",
    "reloads": "Successful model reloads (SIGHUP).",
    "reload_failures": "Model reloads refused because the new model failed to load or warm up.",
    "net_frames_rejected": "Network audio frames rejected (bad framing, unknown stream, ...).",
    "speculations": "Tentative segments queued for the model before the hangover confirmed them.",
    "speculations_discarded": "Speculations withdrawn because speech resumed; never published.",
    "confident_cuts": "Segments ended after vad.confident_hangover_ms because the model was sure of them.",
}
_NAME_BAD = re.compile(r"[^a-zA-Z0-9_]")


class Counters:
    """Thread-safe pipeline counters (running totals and maxima), published in heartbeats."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, float] = {}

    def add(self, name: str, n: float = 1) -> None:
        """Increase a counter."""
        with self._lock:
            self._values[name] = self._values.get(name, 0) + n

    def max(self, name: str, value: float) -> None:
        """Keep the largest value seen."""
        with self._lock:
            self._values[name] = max(self._values.get(name, value), value)

    def snapshot(self) -> dict[str, float]:
        """A copy of all counters."""
        with self._lock:
            return dict(self._values)


@dataclass(frozen=True)
class DistributionSnapshot:
    """Cumulative bucket counts (upper bound, count <= bound), total count and sum, at one moment."""

    buckets: tuple[tuple[float, int], ...]
    count: int
    sum: float


class Distribution:
    """A thread-safe fixed-bucket histogram: the worker observes, scrapes and heartbeats read."""

    def __init__(self, bounds: Sequence[float]) -> None:
        if list(bounds) != sorted(set(bounds)) or not bounds:
            raise ValueError(f"bucket bounds must be increasing and non-empty, got {bounds}")
        self.bounds = tuple(float(b) for b in bounds)
        self._lock = threading.Lock()
        self._counts = [0] * (len(self.bounds) + 1)  # the last one is above every bound
        self._count = 0
        self._sum = 0.0

    def observe(self, value: float, n: int = 1) -> None:
        """Record `value` `n` times."""
        i = bisect.bisect_left(self.bounds, value)
        with self._lock:
            self._counts[i] += n
            self._count += n
            self._sum += value * n

    def snapshot(self) -> DistributionSnapshot:
        """Cumulative counts per bound, in Prometheus's `le` sense."""
        with self._lock:
            counts, total, s = list(self._counts), self._count, self._sum
        cumulative, running = [], 0
        for bound, c in zip(self.bounds, counts, strict=False):
            running += c
            cumulative.append((bound, running))
        return DistributionSnapshot(tuple(cumulative), total, s)

    def stats(self, name: str) -> dict[str, float]:
        """`<name>_count` and `<name>_sum`, as carried in heartbeats."""
        snap = self.snapshot()
        return {f"{name}_count": float(snap.count), f"{name}_sum": snap.sum}


def is_gauge(key: str) -> bool:
    """Whether a stats key is a level (exposed as a gauge) rather than a running total."""
    return key in GAUGES or key.endswith(GAUGE_SUFFIXES)


class PipelineCollector:
    """A prometheus_client collector that reads a pipeline's stats and histograms on every scrape."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline

    def histograms(self) -> dict[str, tuple[Distribution, str]]:
        """The pipeline's histograms by stats name, with help text."""
        p = self.pipeline
        return {
            "batch_size": (p.batch_sizes, "Segments per model batch."),
            "inference_seconds": (
                p.inference_s,
                "Model time of each classified segment: the wall time of the batch it ran in.",
            ),
        }

    def collect(self) -> Iterator[Any]:
        """One metric family per stats key, the two histograms and an info metric."""
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
            InfoMetricFamily,
        )

        hists = self.histograms()
        hist_keys = {f"{h}_{part}" for h in hists for part in ("count", "sum")}
        stats = {k: 0.0 for k in ALWAYS} | self.pipeline.stats()
        for key in sorted(stats):
            if key in hist_keys:
                continue
            name = f"{PREFIX}_{_NAME_BAD.sub('_', key)}"
            doc = ALWAYS.get(key, f"Pipeline stat {key} (see the heartbeat's stats).")
            family = GaugeMetricFamily if is_gauge(key) else CounterMetricFamily
            yield family(name, doc, value=float(stats[key]))
        for key, (dist, doc) in hists.items():
            snap = dist.snapshot()
            buckets = [(repr(bound), float(c)) for bound, c in snap.buckets]
            buckets.append(("+Inf", float(snap.count)))
            yield HistogramMetricFamily(f"{PREFIX}_{key}", doc, buckets=buckets, sum_value=snap.sum)
        yield InfoMetricFamily(
            PREFIX,
            "The run (changes on restart) and the model being served (changes on reload).",
            value={"run_id": self.pipeline.run_id, "model": self.pipeline.classifier.name},
        )


class MetricsServer:
    """The running HTTP endpoint; `close()` stops it."""

    def __init__(self, server: WSGIServer, thread: threading.Thread) -> None:
        self.server = server
        self.thread = thread

    @property
    def port(self) -> int:
        """The bound TCP port."""
        return int(self.server.server_address[1])

    def close(self) -> None:
        """Stop serving and release the port."""
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(SERVER_JOIN_TIMEOUT_S)


def serve(pipeline: Pipeline, address: str, port: int) -> MetricsServer:
    """Serve `pipeline`'s metrics at http://ADDRESS:PORT/metrics on prometheus_client's own thread."""
    from prometheus_client import CollectorRegistry, start_http_server

    # Our own registry: the process-wide default would add Python/GC/process metrics and keep
    # collectors of earlier pipelines alive in tests.
    registry = CollectorRegistry()
    registry.register(PipelineCollector(pipeline))
    try:
        server, thread = start_http_server(port, addr=address, registry=registry)
    except OSError as e:
        raise ConfigError(
            f"metrics endpoint {address}:{port} cannot listen ({e.strerror or e}); "
            "choose another metrics.port / --metrics-port"
        ) from None
    thread.name = "intentd-metrics"
    log.info("metrics at http://%s:%d/metrics", address, port)
    return MetricsServer(server, thread)
