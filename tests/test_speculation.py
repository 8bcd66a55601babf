"""Speculative inference: the same events as without it, published once the hangover confirms them."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import speech
from inprocess import run_to_end

from intentd.config import Config, ModelConfig
from intentd.model import Classifier
from intentd.publisher import Result
from intentd.runner import Pipeline
from intentd.segment import Segment, Tentative
from intentd.sources import WavSource
from intentd.speculation import Speculations
from intentd.vad import VadConfig
from intentd_client.protocol import IntentEvent

# The first request pauses 0.3 s mid-sentence (longer than tail_ms, shorter than the hangover):
# a speculation that must be withdrawn. The others end in long gaps: speculations confirmed.
PAUSED = ["please freeze my card", "the one ending in four"]
REQUESTS = ["what is my balance", "pay my phone bill", "I moved to a new address"]


@pytest.fixture(scope="module")
def wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four requests at 16 kHz, the first with a pause inside it."""
    first = speech.recording(PAUSED, gap_s=0.3, lead_s=0.5)
    rest = speech.recording(REQUESTS, gap_s=1.5, lead_s=1.0)
    rec = speech.Recording(
        np.concatenate([first.samples, rest.samples]), 16000, [], [" ".join(PAUSED), *REQUESTS]
    )
    return rec.write(tmp_path_factory.mktemp("speculation") / "requests.wav")


@pytest.fixture(scope="module")
def classifier(tiny_model_nomask: Path) -> Classifier:
    """The tiny model (no attention mask, like wav2vec2-base) on the CPU, loaded once."""
    return Classifier(str(tiny_model_nomask), device="cpu")


def replay(
    classifier: Classifier, wav: Path, speculative: bool, realtime: bool, vad: VadConfig | None = None
) -> tuple[Pipeline, list[IntentEvent]]:
    """The pipeline over `wav` to its end; the pipeline and its events."""
    # One segment per model pass, so that both runs give the model exactly the same inputs
    # (batch-mates would change the float rounding, with or without speculation).
    vad = dataclasses.replace(vad or VadConfig(), speculative=speculative)
    cfg = Config(model=ModelConfig(max_batch=1), vad=vad)
    return run_to_end(cfg, classifier, WavSource(wav, realtime=realtime))


def published(e: IntentEvent) -> tuple[object, ...]:
    """What an event says about its utterance (not its timing or sequence number)."""
    return (e.source, e.intent, e.score, e.top_k, e.start_s, e.end_s, e.model)


def test_events_are_the_same_with_speculation_on_and_off(classifier: Classifier, wav: Path) -> None:
    plain_pipe, plain = replay(classifier, wav, speculative=False, realtime=False)
    # Real time, as from a microphone: the model runs while the hangover is being waited out.
    pipe, spec = replay(classifier, wav, speculative=True, realtime=True)
    assert len(plain) == 1 + len(REQUESTS)
    assert [published(e) for e in spec] == [published(e) for e in plain]
    assert [e.seq for e in spec] == sorted(e.seq for e in spec)
    stats = pipe.stats()
    assert plain_pipe.stats()["speculations"] == 0
    assert stats["segments"] == stats["events"] == len(plain)
    assert stats["speculations_discarded"] >= 1, "the pause inside the first request"
    assert stats["speculations"] - stats["speculations_discarded"] == stats["segments"]


def test_as_fast_as_the_file_reads_too(classifier: Classifier, wav: Path) -> None:
    # The audio thread now outruns the worker: most confirmations come before the result.
    _, plain = replay(classifier, wav, speculative=False, realtime=False)
    pipe, spec = replay(classifier, wav, speculative=True, realtime=False)
    assert [published(e) for e in spec] == [published(e) for e in plain]
    assert pipe.stats()["events"] == pipe.stats()["segments"] == len(plain)


def test_a_confident_result_cuts_the_pause_short(classifier: Classifier, wav: Path) -> None:
    # Every result counts as confident at score 0: the 0.3 s pause in the first request now ends
    # it (its second half is long enough to stand after a follow-up). A replay waits for each
    # verdict, so this is what a live daemon whose model keeps up would publish.
    plain_pipe, plain = replay(classifier, wav, speculative=True, realtime=False)
    sure = VadConfig(confident_hangover_ms=240, confident_score=0.0)
    pipe, early = replay(classifier, wav, speculative=True, realtime=False, vad=sure)
    assert len(early) == len(plain) + 1 == 2 + len(REQUESTS)
    assert early[0].end_s <= early[1].start_s < plain[0].end_s
    assert [published(e) for e in early[2:]] == [published(e) for e in plain[1:]]
    assert pipe.stats()["speculations_discarded"] == 0
    assert pipe.stats()["confident_cuts"] == len(early)  # every pause ended at 240 ms
    assert plain_pipe.stats()["confident_cuts"] == 0
    # The tiny model is never sure (no score of 1.0): every segment waits out the full hangover.
    never = dataclasses.replace(sure, confident_score=1.0)
    unsure_pipe, unsure = replay(classifier, wav, speculative=True, realtime=False, vad=never)
    assert [published(e) for e in unsure] == [published(e) for e in plain]
    assert unsure_pipe.stats()["confident_cuts"] == 0


def segment(source: str = "mic", end_s: float = 2.0) -> Segment:
    """A small segment; only its identity and source matter here."""
    n = int(end_s * 100)
    return Segment(np.zeros(n, np.float32), 100, 0.0, end_s, end_s - 0.1, source, False)


def result(source: str = "mic", cut_at: float = 1.0) -> Result:
    """A classified segment as the worker makes it."""
    return Result(source, "balance", 0.9, (("balance", 0.9),), 0.0, 2.0, cut_at, 1.0, 50.0, "tiny")


def test_a_result_finished_before_the_confirmation_is_released_by_it() -> None:
    released: list[Result | None] = []
    specs = Speculations(released.append)
    seg = segment()
    spec = specs.start(Tentative(seg))
    assert specs.wanted(spec)
    specs.finish(spec, result(cut_at=1.0))
    assert released == []
    assert specs.confirm(seg, cut_at=5.0)
    assert released == [dataclasses.replace(result(), cut_at=5.0)]  # total runs from the cut


def test_a_result_confirmed_before_it_is_finished_is_released_by_the_worker() -> None:
    released: list[Result | None] = []
    specs = Speculations(released.append)
    seg = segment()
    spec = specs.start(Tentative(seg))
    assert specs.confirm(seg, cut_at=5.0)
    assert released == []
    specs.finish(spec, None)  # the model failed on it: the cut segment is lost, and counted
    assert released == [None]


def test_a_withdrawn_speculation_is_never_released() -> None:
    released: list[Result | None] = []
    specs = Speculations(released.append)
    first, later = segment(end_s=1.0), segment(end_s=2.0)
    spec = specs.start(Tentative(first))
    specs.withdraw(first)
    assert not specs.wanted(spec)
    specs.finish(spec, result())
    assert not specs.confirm(first, cut_at=5.0)
    assert not specs.confirm(later, cut_at=5.0), "not speculated: queued like any segment"
    other = specs.start(Tentative(segment("net:b")))
    specs.finish(other, result("net:b"))
    assert released == []
    assert specs.stats() == {"speculations": 2.0, "speculations_discarded": 1.0, "confident_cuts": 0.0}


@pytest.mark.parametrize(("outcome", "confident"), [(0.9, True), (0.89, False), (None, False)])
def test_finishing_settles_the_verdict(outcome: float | None, confident: bool) -> None:
    specs = Speculations(lambda r: None, confident_score=0.9)
    tentative = Tentative(segment())
    spec = specs.start(tentative)
    assert not tentative.verdict.confident()
    specs.finish(spec, None if outcome is None else dataclasses.replace(result(), score=outcome))
    assert tentative.verdict.confident() is confident
    tentative.verdict.settle(not confident)  # the first answer counts
    assert tentative.verdict.confident() is confident
