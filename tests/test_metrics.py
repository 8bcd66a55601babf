"""The Prometheus endpoint: a real daemon scraped over HTTP, and the collector over an in-process pipeline."""

from __future__ import annotations

import signal
import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import speech
from daemonproc import start_daemon
from inprocess import run_to_end
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from intentd import config
from intentd.errors import ConfigError
from intentd.metrics import ALWAYS, Distribution, PipelineCollector, is_gauge, serve
from intentd.model import Classifier
from intentd.notify import Notifier
from intentd.runner import Pipeline
from intentd.sources import WavSource
from intentd_client.protocol import IntentEvent

TEXTS = ["what is my account balance", "please freeze my debit card"]
SCRAPE_TIMEOUT_S = 5.0


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> str:
    """GET /metrics over HTTP."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=SCRAPE_TIMEOUT_S) as r:
        assert r.status == 200
        return r.read().decode()


def samples(text: str) -> dict[str, float]:
    """Every sample of the text format by name plus labels, e.g. `intentd_batch_size_bucket{le=1.0}`."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


def types(text: str) -> dict[str, str]:
    """The TYPE of every metric family."""
    return {f.name: f.type for f in text_string_to_metric_families(text)}


def check_consistent(m: dict[str, float], events: list[IntentEvent]) -> None:
    """What every scrape must satisfy once `events` were published and nothing failed."""
    n = len(events)
    assert m["intentd_events_total"] == n
    assert m["intentd_segments_total"] == n  # min_score 0: every cut segment is published
    assert m["intentd_worker_errors_total"] == 0
    assert m["intentd_frames_captured_total"] > 0
    assert m["intentd_inference_seconds_count"] == n
    assert m["intentd_batch_size_sum"] == n
    assert m["intentd_batch_size_count"] == m["intentd_batches_total"]
    assert m["intentd_inference_seconds_bucket{le=+Inf}"] == n
    assert m["intentd_inference_seconds_sum"] == pytest.approx(
        sum(e.latency_ms.inference for e in events) / 1000.0, abs=1e-4 * n
    )
    assert m[f"intentd_info{{model={events[0].model},run_id={events[0].run_id}}}"] == 1


def test_daemon_serves_metrics_consistent_with_its_events(tiny_model: Path, tmp_path: Path) -> None:
    port = free_port()
    d = start_daemon(tmp_path, TEXTS, ["--model", str(tiny_model), "--metrics-port", str(port)])
    try:
        events = d.collect(len(TEXTS), deadline_s=90)
        assert len(events) == len(TEXTS), (d.proc.poll(), d.proc.stderr.read() if d.proc.poll() else "")
        # The events counter is raised just after the send; give the publish thread a moment.
        deadline = time.monotonic() + SCRAPE_TIMEOUT_S
        while (m := samples(scrape(port)))["intentd_events_total"] < len(events):
            assert time.monotonic() < deadline, m
            time.sleep(0.1)
        check_consistent(m, events)
        kinds = types(scrape(port))
        assert kinds["intentd_batch_size"] == kinds["intentd_inference_seconds"] == "histogram"
        assert kinds["intentd_queue_depth"] == kinds["intentd_segment_queue_depth"] == "gauge"
        assert kinds["intentd_frames_captured"] == kinds["intentd_queue_drops"] == "counter"
        for name in ALWAYS:  # present from the start, at 0 when nothing happened
            assert (f"intentd_{name}" if is_gauge(name) else f"intentd_{name}_total") in m
        assert m["intentd_device_reopens_total"] == 0 and m["intentd_reloads_total"] == 0
        # The heartbeat carries the same numbers.
        d.poll(1.5)
        beat = d.beats[-1].stats
        assert beat["inference_seconds_count"] == len(events) == beat["batch_size_sum"]
        assert beat["events"] == len(events)
        d.proc.send_signal(signal.SIGTERM)
        assert d.proc.wait(timeout=30) == 0
    finally:
        d.stop()


@pytest.fixture(scope="module")
def classifier(tiny_model: Path) -> Classifier:
    """The tiny model on the CPU, loaded once."""
    return Classifier(str(tiny_model), device="cpu")


@pytest.fixture(scope="module")
def wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two utterances, 16 kHz."""
    return speech.recording(TEXTS).write(tmp_path_factory.mktemp("metrics") / "two.wav")


def test_collector_over_an_in_process_pipeline(classifier: Classifier, wav: Path) -> None:
    pipe, events = run_to_end(config.Config(), classifier, WavSource(wav))
    assert len(events) == len(TEXTS)
    registry = CollectorRegistry()
    registry.register(PipelineCollector(pipe))
    m = samples(generate_latest(registry).decode())
    check_consistent(m, events)
    buckets = [v for k, v in m.items() if k.startswith("intentd_batch_size_bucket")]
    assert buckets == sorted(buckets) and buckets[-1] == m["intentd_batch_size_count"]
    assert m["intentd_chunks_total"] > 0  # a source's own counter, not in ALWAYS, still exposed


def test_endpoint_runs_while_the_pipeline_runs_and_stops_with_it(classifier: Classifier, wav: Path) -> None:
    port = free_port()
    cfg = config.load(None, {"metrics": {"port": port}})
    seen: list[str] = []

    def scrape_on_first_event(_event: IntentEvent) -> None:
        if not seen:
            seen.append(scrape(port))

    src = WavSource(wav)
    src.open()
    pipe = Pipeline(cfg, classifier, [src], on_intent=scrape_on_first_event, publish=False)
    pipe.start()
    pipe.supervise(Notifier(None))
    assert seen and "intentd_frames_captured_total" in seen[0]
    with pytest.raises(OSError):
        scrape(port)  # closed once supervise returned


@pytest.fixture
def idle_pipeline(classifier: Classifier, wav: Path) -> Iterator[Pipeline]:
    """A pipeline that was never started."""
    yield Pipeline(config.Config(), classifier, [WavSource(wav)], publish=False)


def test_a_taken_port_is_one_config_error(idle_pipeline: Pipeline) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=f"127.0.0.1:{port} cannot listen"):
            serve(idle_pipeline, "127.0.0.1", port)


def test_distribution_buckets_are_cumulative_and_inclusive() -> None:
    d = Distribution([1.0, 2.0, 4.0])
    for v in (0.5, 1.0, 1.5, 4.0, 9.0):
        d.observe(v)
    d.observe(2.0, n=3)
    snap = d.snapshot()
    assert snap.buckets == ((1.0, 2), (2.0, 6), (4.0, 7))
    assert snap.count == 8 and snap.sum == pytest.approx(22.0)
    assert d.stats("x") == {"x_count": 8.0, "x_sum": pytest.approx(22.0)}
    with pytest.raises(ValueError, match="increasing"):
        Distribution([2.0, 1.0])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"port": 65536}, "metrics.port must be 0..65535"),
        ({"port": -1}, "metrics.port must be 0..65535"),
        ({"address": "localhost"}, "metrics.address 'localhost' must be an IP address"),
    ],
)
def test_bad_metrics_config_is_one_clear_error(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        config.load(None, {"metrics": overrides})


def test_metrics_are_off_and_loopback_by_default() -> None:
    cfg = config.Config()
    assert cfg.metrics.port == 0 and cfg.metrics.address == "127.0.0.1"
