"""`intentd demo`: speak a few banking requests, replay them through the pipeline, show what it heard."""

from __future__ import annotations

import dataclasses
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

from intentd.config import Config, SourceConfig
from intentd.model import Classifier
from intentd.resample import resample
from intentd.runner import Pipeline
from intentd.sources import WavSource
from intentd.speak import speak
from intentd_client.protocol import IntentEvent

DEMO_RATE_HZ = 48000  # a typical microphone rate, so the demo exercises the resampler too
GAP_S = 1.5
NOISE_DBFS = -55.0

# (expected intent, what the speaker says, espeak-ng voice)
REQUESTS = (
    ("balance", "Hi, could you tell me how much money I have in my account?", "en-us"),
    ("freeze", "I lost my card, please freeze it right away.", "en-gb+f3"),
    ("address", "I've moved house and need to change my address.", "en-us+m3"),
    ("pay_bill", "How do I pay my electricity bill with the app?", "en-gb-x-rp"),
    ("atm_limit", "What is the most cash I can take out at an ATM in one day?", "en-us+f2"),
    ("joint_account", "My wife and I would like to open a joint account.", "en-gb"),
)


def build_recording(path: Path, seed: int = 0) -> list[tuple[str, str, float, float]]:
    """Write the demo stream (48 kHz, quiet noise, gaps of silence); (intent, text, start_s, end_s) each."""
    parts = [np.zeros(int(0.5 * DEMO_RATE_HZ), np.float32)]
    spans: list[tuple[float, float]] = []
    pos = parts[0].size
    for _intent, text, voice in REQUESTS:
        samples, rate = speak(text, voice=voice)
        speech = resample(samples, rate, DEMO_RATE_HZ)
        spans.append((pos / DEMO_RATE_HZ, (pos + speech.size) / DEMO_RATE_HZ))
        parts += [speech, np.zeros(int(GAP_S * DEMO_RATE_HZ), np.float32)]
        pos += speech.size + int(GAP_S * DEMO_RATE_HZ)
    audio = np.concatenate(parts)
    rng = np.random.default_rng(seed)
    audio += (10 ** (NOISE_DBFS / 20) * rng.standard_normal(audio.size)).astype(np.float32)
    sf.write(str(path), np.clip(audio, -1, 1), DEMO_RATE_HZ, subtype="PCM_16")
    return [
        (intent, text, start, end) for (intent, text, _), (start, end) in zip(REQUESTS, spans, strict=True)
    ]


def run_demo(cfg: Config, classifier: Classifier) -> int:
    """Replay the demo stream through the full pipeline and print one line per utterance."""
    events: list[IntentEvent] = []
    with tempfile.TemporaryDirectory(prefix="intentd-demo-") as tmp:
        wav = Path(tmp) / "demo.wav"
        expected = build_recording(wav)
        cfg = dataclasses.replace(cfg, source=SourceConfig(spec=f"wav:{wav}"))
        source = WavSource(str(wav))
        source.open()
        pipe = Pipeline(cfg, classifier, [source], on_intent=events.append, publish=False)
        pipe.start()
        pipe.wait()
    print(f"model: {classifier.path}")
    right = 0
    for ev in events:
        said = [(w, t) for w, t, start, end in expected if ev.start_s < end and ev.end_s > start]
        want, text = said[0] if said else ("-", "(no utterance here)")
        ok = ev.intent == want
        right += ok
        print(
            f"{ev.start_s:6.2f}-{ev.end_s:6.2f}s  {'ok ' if ok else 'MISS'} heard {ev.intent:<20} "
            f"({ev.score:.2f}, {ev.latency_ms.total:.0f} ms)  said: {text}"
        )
    print(f"{right}/{len(expected)} requests understood; {len(events)} events for {len(expected)} utterances")
    if len(events) != len(expected):
        print("warning: the segmenter did not find one utterance per request", file=sys.stderr)
    return 0
