"""A model that fails on some inputs: counted, isolated to that input, and surfaced when it keeps failing."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest
import speech
from tinymodel import save_tiny_checkpoint

from intentd.config import Config, ModelConfig, SourceConfig
from intentd.model import Classifier
from intentd.notify import Notifier
from intentd.runner import Pipeline
from intentd.sources import WavSource
from intentd.vad import VadConfig
from intentd_client.protocol import IntentEvent

# wav2vec2's first convolution needs at least its kernel of input: with a 1 s kernel, short
# utterances make the model raise while long ones (and the 1 s warm-up) work. A real model error.
# Without an attention mask the classifier runs each length alone, so a short one fails even
# when it shares a batch with long ones.
KERNEL_SAMPLES = 16_000
LONG = "I would like to check the balance of my current account please"
SHORT = "yes"


@pytest.fixture(scope="module")
def picky_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_checkpoint(
        tmp_path_factory.mktemp("picky"), conv_kernel=(KERNEL_SAMPLES, 3, 3, 3, 3, 2, 2)
    )


def _run(model: Path, wav: Path, notifier: Notifier, max_batch: int, realtime: bool = False):
    cfg = Config(
        model=ModelConfig(max_batch=max_batch, max_wait_ms=300),
        source=SourceConfig(spec=f"wav:{wav}"),
        # The short "yes" utterances, 0.8 s apart, would be dropped as follow-ups; here they must
        # reach the model.
        vad=VadConfig(followup_min_speech_ms=0),
    )
    events: list[IntentEvent] = []
    src = WavSource(str(wav), realtime=realtime)
    src.open()
    pipe = Pipeline(cfg, Classifier(model, device="cpu"), [src], on_intent=events.append, publish=False)
    pipe.start()
    pipe.supervise(notifier)
    return pipe, events


def test_one_failing_input_costs_only_itself(picky_model: Path, tmp_path: Path) -> None:
    rec = speech.recording([LONG, SHORT, LONG], rate_hz=16000, gap_s=0.8)
    pipe, events = _run(picky_model, rec.write(tmp_path / "s.wav"), Notifier(None), max_batch=8)
    stats = pipe.counters.snapshot()
    assert stats["segments"] == 3
    assert len(events) == 2, "both long utterances are published even if batched with the bad one"
    assert [round(e.start_s) for e in events] == [round(rec.spans_s[0][0]), round(rec.spans_s[2][0])]
    assert (stats["worker_errors"], stats["segments_failed"]) == (1, 1), stats
    assert pipe.error is None


def test_repeated_failures_surface_as_status_and_stop_the_watchdog(picky_model: Path, tmp_path: Path) -> None:
    rec = speech.recording([SHORT] * 5, rate_hz=16000, gap_s=0.8, lead_s=0.3)
    wav = rec.write(tmp_path / "short.wav")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(tmp_path / "notify.sock"))
    listener.settimeout(0)
    notifier = Notifier(str(tmp_path / "notify.sock"), watchdog_usec=1_000_000)
    messages: list[tuple[float, str]] = []

    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            try:
                messages.append((time.monotonic(), listener.recv(4096).decode()))
            except BlockingIOError:
                time.sleep(0.01)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    pipe, events = _run(picky_model, wav, notifier, max_batch=1, realtime=True)
    done.set()
    reader.join()
    assert events == [] and pipe.counters.snapshot()["worker_errors"] == 5
    stalled = [t for t, m in messages if "STATUS=stalled: the last 3 model batches failed" in m]
    assert stalled, [m for _, m in messages]
    after = [m for t, m in messages if t > stalled[0]]
    assert "WATCHDOG=1" not in after, "no watchdog pings while every batch fails"
    listener.close()
