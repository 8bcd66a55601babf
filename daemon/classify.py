"""Whole-file classification (`intentd classify`): the front end and the batched model, no VAD."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence

import numpy as np

from intentd.audio import read_wav, shown
from intentd.errors import AudioFileError
from intentd.model import Classifier, Prediction
from intentd.resample import MODEL_RATE_HZ, to_model_rate

log = logging.getLogger(__name__)

# Files are read this many at a time, so memory stays bounded for long file lists.
WINDOW_FILES = 64
# A clip is decoded, resampled and run through the model whole; longer recordings go through
# `intentd replay`, which cuts them into utterances. The daemon's own segments are shorter still.
MAX_CLIP_S = 60.0
# Shorter clips are padded with silence to this length: wav2vec2-style encoders need 400 samples
# (25 ms at 16 kHz) for one output frame and raise on less.
MIN_CLIP_S = 0.1


def load_clip(path: str, trained_rate_hz: int | None = None) -> np.ndarray:
    """A file as the model sees it: float32 mono at 16 kHz (the same front end as training),
    band-limited to the checkpoint's training audio (`Classifier.trained_rate_hz`)."""
    samples, rate = read_wav(path, max_s=MAX_CLIP_S)
    if samples.size == 0:
        raise AudioFileError(f"{shown(path)}: contains no audio samples")
    clip = to_model_rate(samples, rate, trained_rate_hz)
    min_samples = round(MIN_CLIP_S * MODEL_RATE_HZ)
    return np.pad(clip, (0, min_samples - len(clip))) if len(clip) < min_samples else clip


def classify_clips(clf: Classifier, clips: Sequence[np.ndarray], max_batch: int) -> list[Prediction]:
    """Classify clips in batches of similar length; results in input order."""
    order = sorted(range(len(clips)), key=lambda i: len(clips[i]))
    out: dict[int, Prediction] = {}
    for start in range(0, len(order), max_batch):
        idx = order[start : start + max_batch]
        for i, p in zip(idx, clf.classify([clips[i] for i in idx]), strict=True):
            out[i] = p
    return [out[i] for i in range(len(clips))]


def classify_files(paths: Sequence[str], clf: Classifier, max_batch: int) -> int:
    """Print one JSON line per file; bad files get one error line each. Exit code 2 if any failed."""
    failed = 0
    for start in range(0, len(paths), WINDOW_FILES):
        window = paths[start : start + WINDOW_FILES]
        good: list[str] = []
        clips: list[np.ndarray] = []
        for path in window:
            try:
                clips.append(load_clip(path, clf.trained_rate_hz))
                good.append(path)
            except AudioFileError as e:
                print(f"intentd: error: {e}", file=sys.stderr)
                failed += 1
        for path, p in zip(good, classify_clips(clf, clips, max_batch), strict=True):
            line = {
                "path": path,
                "intent": p.intent,
                "score": round(p.score, 6),
                "top_k": [{"label": label, "score": round(s, 6)} for label, s in p.top_k],
            }
            sys.stdout.write(json.dumps(line) + "\n")
        sys.stdout.flush()
    return 2 if failed else 0
