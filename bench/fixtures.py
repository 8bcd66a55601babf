"""Shared benchmark inputs: the wav2vec2-base checkpoint and generated utterances, cached in bench/out/."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent))

from streams import REQUESTS, VOICES, Stream, build_stream

from intentd.resample import MODEL_RATE_HZ, resample
from intentd.speak import speak

OUT_DIR = Path(__file__).resolve().parent / "out"
BASE_MODEL_DIR = OUT_DIR / "models" / "base"
CLIPS_DIR = OUT_DIR / "clips"
STREAMS_DIR = OUT_DIR / "streams"
MIN_CLIP_S = 1.0
MAX_CLIP_S = 5.0
# espeak-ng pads with near-silence; below this counts as silence when trimming.
TRIM_LEVEL = 0.01
SHORT_PHRASES = (
    ("balance", "My balance?"),
    ("freeze", "Block my card."),
    ("pay_bill", "Pay my bill."),
    ("address", "New address."),
    ("app_error", "The app crashed."),
    ("cash_deposit", "Deposit cash."),
    ("direct_debit", "Cancel a direct debit."),
)


def base_checkpoint(out: Path = BASE_MODEL_DIR, seed: int = 0) -> Path:
    """wav2vec2-base (`Wav2Vec2Config()` defaults, random init, 14 labels) with wav2vec2-base's extractor."""
    if (out / "model.safetensors").exists():
        return out
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2ForSequenceClassification

    labels = sorted(intent for intent, _ in REQUESTS)
    torch.manual_seed(seed)
    cfg = Wav2Vec2Config(
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
    )
    assert cfg.feat_extract_norm == "group" and cfg.hidden_size == 768 and cfg.num_hidden_layers == 12
    model = Wav2Vec2ForSequenceClassification(cfg)
    extractor = Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=MODEL_RATE_HZ, padding_value=0.0, do_normalize=True,
        return_attention_mask=False,
    )  # fmt: skip
    model.save_pretrained(out)
    extractor.save_pretrained(out)
    return out


def utterance_files(n: int = 100, seed: int = 0) -> list[Path]:
    """`n` espeak-ng utterances of 1-5 s (several voices, rates, phrasings) as 16 kHz WAVs."""
    index = CLIPS_DIR / f"index-{n}-{seed}.json"
    if index.exists():  # names only, so the cache can travel to another machine's checkout
        return [CLIPS_DIR / Path(p).name for p in json.loads(index.read_text())]
    CLIPS_DIR.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    phrases = list(REQUESTS) + list(SHORT_PHRASES)
    paths: list[Path] = []
    i = 0
    while len(paths) < n:
        _, text = phrases[int(rng.integers(len(phrases)))]
        raw, rate = speak(text, voice=VOICES[i % len(VOICES)], wpm=int(rng.integers(130, 200)))
        i += 1
        loud = np.flatnonzero(np.abs(raw) > TRIM_LEVEL)
        if not loud.size:
            continue
        clip = resample(raw[loud[0] : loud[-1] + 1], rate, MODEL_RATE_HZ)
        if not MIN_CLIP_S <= clip.size / MODEL_RATE_HZ <= MAX_CLIP_S:
            continue
        path = CLIPS_DIR / f"u{seed}-{len(paths):03d}.wav"
        sf.write(path, clip, MODEL_RATE_HZ, subtype="FLOAT")
        paths.append(path)
    index.write_text(json.dumps([p.name for p in paths]))
    return paths


def cached_stream(duration_s: float, rate_hz: int, gap_range_s: tuple[float, float], seed: int) -> Stream:
    """`build_stream(...)` at 20 dB SNR, kept in bench/out/streams (as 16-bit PCM), so a machine
    without espeak-ng can run the live benchmarks on streams made elsewhere."""
    lo, hi = gap_range_s
    path = STREAMS_DIR / f"s{duration_s:g}-{rate_hz}-{lo:g}-{hi:g}-{seed}.npz"
    if not path.exists():
        s = build_stream(duration_s, rate_hz, 20.0, gap_range_s=gap_range_s, seed=seed)
        STREAMS_DIR.mkdir(parents=True, exist_ok=True)
        pcm = np.round(s.samples * 32767).astype(np.int16)
        np.savez(path, pcm=pcm, spans_s=np.array(s.spans_s), intents=np.array(s.intents))
    with np.load(path) as z:  # made now or elsewhere, the stream is read back the same way
        spans = [(float(a), float(b)) for a, b in z["spans_s"]]
        return Stream(z["pcm"].astype(np.float32) / 32767, rate_hz, spans, [str(i) for i in z["intents"]])


def machine_load() -> dict[str, float | int]:
    """The 1-minute load average and CPU count, written next to every timing."""
    return {"loadavg_1m": round(os.getloadavg()[0], 2), "cpus": os.cpu_count() or 0}
