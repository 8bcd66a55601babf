"""The classifier: any local Hugging Face audio-classification checkpoint, batched correctly."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import AutoFeatureExtractor, AutoModelForAudioClassification
from transformers.utils import logging as hf_logging

from intentd.errors import ModelError
from intentd.resample import MODEL_RATE_HZ

log = logging.getLogger(__name__)

WARMUP_S = 1.0
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class Prediction:
    """The model's answer for one utterance."""

    intent: str  # top-1 label, or "unknown" when its score is below min_score
    score: float
    top_k: tuple[tuple[str, float], ...]
    inference_ms: float  # wall time of the batch this utterance ran in


def resolve_device(device: str) -> torch.device:
    """Map `auto|cpu|cuda` to a torch device, refusing cuda where there is none."""
    if device not in DEVICES:
        raise ModelError(f"device {device!r} is not one of {', '.join(DEVICES)}")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelError("device cuda requested but no CUDA GPU is available; use --device cpu")
    return torch.device(device)


class Classifier:
    """Loads a checkpoint folder (safetensors only) and classifies 16 kHz float32 utterances."""

    def __init__(
        self,
        path: str | Path,
        device: str = "auto",
        top_k: int = 3,
        min_score: float = 0.0,
        unknown_label: str = "unknown",
    ) -> None:
        self.path = Path(path)
        self.device = resolve_device(device)
        self.top_k = top_k
        self.min_score = min_score
        self.unknown_label = unknown_label
        self.extractor, self.model = _load(self.path, self.device)
        cfg = self.model.config
        self.labels = [cfg.id2label[i] for i in range(cfg.num_labels)]
        self.name = self.path.resolve().name
        # Checkpoints whose feature extractor gives no attention mask (wav2vec2-base: group norm
        # over time in the first conv) see padding as signal, so only equal lengths may share a batch.
        self.pads_with_mask = bool(getattr(self.extractor, "return_attention_mask", False))
        self.dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        if self.dtype == torch.float16:
            self.model.half()

    def warmup(self) -> None:
        """Run one dummy batch so the first real utterance doesn't pay for lazy initialisation."""
        t0 = time.perf_counter()
        self.classify([np.zeros(int(WARMUP_S * MODEL_RATE_HZ), np.float32)])
        log.info("model %s warmed up on %s in %.2f s", self.name, self.device, time.perf_counter() - t0)

    def classify(self, batch: Sequence[np.ndarray]) -> list[Prediction]:
        """Classify utterances (float32 mono, 16 kHz); results in input order."""
        if not batch:
            return []
        out: list[Prediction | None] = [None] * len(batch)
        for group in self._groups(batch):
            t0 = time.perf_counter()
            probs = self._forward([batch[i] for i in group])
            ms = (time.perf_counter() - t0) * 1000.0
            for i, p in zip(group, probs, strict=True):
                out[i] = self._prediction(p, ms)
        return [p for p in out if p is not None]

    def _groups(self, batch: Sequence[np.ndarray]) -> list[list[int]]:
        if self.pads_with_mask:
            return [list(range(len(batch)))]
        by_len: dict[int, list[int]] = {}
        for i, x in enumerate(batch):
            by_len.setdefault(len(x), []).append(i)
        return list(by_len.values())

    @torch.inference_mode()
    def _forward(self, xs: list[np.ndarray]) -> np.ndarray:
        feats = self.extractor(
            xs,
            sampling_rate=MODEL_RATE_HZ,
            padding=True,
            return_attention_mask=self.pads_with_mask,
            return_tensors="pt",
        )
        inputs = {
            k: (v.to(self.device, self.dtype) if v.is_floating_point() else v.to(self.device))
            for k, v in feats.items()
        }
        logits = self.model(**inputs).logits.float()
        return torch.softmax(logits, dim=-1).cpu().numpy()

    def _prediction(self, probs: np.ndarray, inference_ms: float) -> Prediction:
        order = np.argsort(-probs)[: max(1, self.top_k)]
        top = tuple((self.labels[i], float(probs[i])) for i in order)
        label, score = top[0]
        if score < self.min_score:
            label = self.unknown_label
        return Prediction(label, score, top, inference_ms)


def _load(path: Path, device: torch.device) -> tuple[object, torch.nn.Module]:
    if not path.is_dir():
        raise ModelError(
            f"model folder {path} not found; pass --model DIR (a save_pretrained folder) "
            "or train one with `intentd train`"
        )
    if not any(path.glob("*.safetensors")):
        raise ModelError(
            f"model folder {path} has no .safetensors weights; intentd loads safetensors only "
            "(re-save the checkpoint with save_pretrained(safe_serialization=True))"
        )
    # A daemon's log is no place for a weight-loading progress bar.
    hf_logging.disable_progress_bar()
    try:
        extractor = AutoFeatureExtractor.from_pretrained(str(path))
        model = AutoModelForAudioClassification.from_pretrained(str(path), use_safetensors=True)
    except (OSError, ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"model folder {path} cannot be loaded: {first}") from e
    rate = getattr(extractor, "sampling_rate", MODEL_RATE_HZ)
    if rate != MODEL_RATE_HZ:
        raise ModelError(f"model folder {path} expects {rate} Hz audio; intentd feeds {MODEL_RATE_HZ} Hz")
    model.eval().to(device)
    log.info("loaded model %s (%d labels) on %s", path, model.config.num_labels, device)
    return extractor, model
