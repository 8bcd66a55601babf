"""The classifier: any local Hugging Face audio-classification checkpoint, batched correctly."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoConfig, AutoFeatureExtractor, AutoModelForAudioClassification
from transformers.utils import logging as hf_logging

from intentd import ort
from intentd.encoder import MatmulEncoder
from intentd.encoder import supports as encoder_supports
from intentd.errors import ModelError
from intentd.resample import MODEL_RATE_HZ, change_speed
from intentd.rewrites import (
    Bf16Convs,
    ClipLengthNorm,
    cpu_has_amx,
    cpu_has_native_bf16,
    fold_weight_norm,
    quantize_linear,
    release_freed_memory,
)

log = logging.getLogger(__name__)

WARMUP_S = 1.0
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "int8")
# config.json key `intentd train` writes: the sample rate of the audio the model was trained on
# (the highest among its training clips). Input wider than that is band-limited to it.
TRAINED_RATE_KEY = "intentd_trained_rate_hz"
# config.json key: test-time speeds. Each utterance is classified at each speed (tempo and pitch
# together, as training's speed augmentation) and the probabilities are averaged. Absent: 1 only.
TTA_SPEEDS_KEY = "intentd_tta_speeds"
TTA_SPEED_RANGE = (0.8, 1.25)
# Clips whose lengths are within this ratio of each other share a forward pass: sorted length
# buckets keep padding (work spent on zeros) under 25 % of a batch.
MAX_PAD_RATIO = 1.25
# On cuda each new input shape costs kernel selection (a cuDNN plan per conv layer) and allocator
# growth, and utterance lengths never repeat. Where padding is exact, batches are padded up to a
# length grid and a power-of-two batch size, so a running daemon sees a few dozen shapes.
SHAPE_STEP_SAMPLES = 4_000  # 0.25 s
# torch's cuDNN switch is one per process; a reload warms a new model while the old one serves.
_CUDNN_LOCK = threading.Lock()


@dataclass(frozen=True)
class Prediction:
    """The model's answer for one utterance."""

    intent: str  # top-1 label, or "unknown" when its score is below min_score
    score: float
    top_k: tuple[tuple[str, float], ...]
    inference_ms: float  # wall time of the forward passes this utterance ran in


def resolve_device(device: str) -> torch.device:
    """Map `auto|cpu|cuda` to a torch device, refusing cuda where there is none."""
    if device not in DEVICES:
        raise ModelError(f"device {device!r} is not one of {', '.join(DEVICES)}")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelError("device cuda requested but no CUDA GPU is available; use --device cpu")
    return torch.device(device)


def compute_dtype(device: torch.device, precision: str) -> torch.dtype:
    """The dtype the model runs in: fp16 on cuda, fp32 on cpu, qint8 (dynamic, Linear layers) for int8."""
    if precision not in PRECISIONS:
        raise ModelError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    if device.type == "cuda":
        if precision == "int8":
            raise ModelError(
                "precision int8 is CPU-only (dynamic quantisation); on cuda the model runs in fp16: "
                "use --precision fp32 or --device cpu"
            )
        return torch.float16
    return torch.qint8 if precision == "int8" else torch.float32


def batch_groups(
    lengths: Sequence[int], mixes_lengths: bool, max_pad_ratio: float = MAX_PAD_RATIO
) -> list[list[int]]:
    """Indices of clips that may share one forward pass, each group in ascending length order."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    groups: list[list[int]] = []
    for i in order:
        if groups:
            first = lengths[groups[-1][0]]
            # Where padding would change the result, only equal lengths share a batch.
            fits = lengths[i] <= first * max_pad_ratio if mixes_lengths else lengths[i] == first
            if fits:
                groups[-1].append(i)
                continue
        groups.append([i])
    return groups


class Classifier:
    """Loads a checkpoint folder (safetensors only) and classifies 16 kHz float32 utterances."""

    def __init__(
        self,
        path: str | Path,
        device: str = "auto",
        top_k: int = 3,
        min_score: float = 0.0,
        unknown_label: str = "unknown",
        precision: str = "fp32",
        cudnn: bool = False,
        bf16_encoder: bool = True,
        runtime: str = "torch",
    ) -> None:
        """`bf16_encoder`: with int8, run the conv layers in bf16 where the CPU has it natively.

        `runtime="onnx"` runs the checkpoint exported to ONNX in ONNX Runtime, on the CPU.
        """
        self.path = Path(path)
        if runtime not in ort.RUNTIMES:
            raise ModelError(f"runtime {runtime!r} is not one of {', '.join(ort.RUNTIMES)}")
        self.runtime = runtime
        if runtime == "onnx" and device == "cuda":
            raise ModelError("runtime onnx runs on the CPU; use --device cpu or --runtime torch")
        self.device = resolve_device("cpu" if runtime == "onnx" else device)
        self.precision = precision
        # Checked before loading, so a bad combination fails in milliseconds, not after the load.
        self.dtype = compute_dtype(self.device, precision)
        self.top_k = top_k
        self.cudnn = cudnn
        self.min_score = min_score
        self.unknown_label = unknown_label
        self.onnx: ort.OrtModel | None = None
        self.encoder: MatmulEncoder | None = None  # the conv encoder outside an ONNX graph
        if runtime == "onnx":
            self.extractor, cfg, self.onnx, self.encoder = _load_onnx(self.path, precision, bf16_encoder)
            self.model = None
        else:
            self.extractor, self.model = _load(self.path, self.device)
            fold_weight_norm(self.model)
            cfg = self.model.config
        self.labels = [cfg.id2label[i] for i in range(cfg.num_labels)]
        self.name = self.path.resolve().name
        self.trained_rate_hz = trained_rate_hz(getattr(cfg, TRAINED_RATE_KEY, None), self.path)
        self.tta_speeds = tta_speeds(getattr(cfg, TTA_SPEEDS_KEY, None), self.path)
        if self.tta_speeds != (1.0,):
            log.info("model %s classifies each utterance at speeds %s", self.name, self.tta_speeds)
        if self.trained_rate_hz is not None and self.trained_rate_hz < MODEL_RATE_HZ:
            log.info(
                "model %s was trained on %d Hz audio: input is band-limited to %d Hz",
                self.name, self.trained_rate_hz, self.trained_rate_hz // 2,
            )  # fmt: skip
        # Clips of different lengths share a pass when padding cannot change their results: the
        # checkpoint takes an attention mask, or its one time-wide norm is made to skip the padding.
        self.clip_norm = ClipLengthNorm.install(self.model) if self.model is not None else None
        self.mixes_lengths = self.clip_norm is not None or bool(
            getattr(self.extractor, "return_attention_mask", False)
        )
        # Only on cuda do mixed lengths share a pass: on a CPU a batch of one already fills the
        # cores, so padding is only extra work (batch 1 was 14-16 % faster than padded batches of 8).
        self.pads_batches = self.mixes_lengths and self.device.type == "cuda"
        self.pads_to_shapes = self.pads_batches
        self.bf16_encoder = self.encoder is not None
        # With ONNX Runtime (no torch model) the export already holds the precision.
        if self.model is not None and self.dtype == torch.float16:
            self.model.half()
        elif self.model is not None and self.dtype == torch.qint8:
            quantize_linear(self.model)
            if bf16_encoder and cpu_has_native_bf16():
                self.bf16_encoder = Bf16Convs.install(self.model)
        # Activations stay float: int8 quantises Linear weights and quantises activations on the fly.
        self.input_dtype = torch.float16 if self.dtype == torch.float16 else torch.float32

    def warmup(self) -> None:
        """Run one dummy batch so the first real utterance doesn't pay for lazy initialisation."""
        t0 = time.perf_counter()
        self.classify([np.zeros(int(WARMUP_S * MODEL_RATE_HZ), np.float32)])
        log.info(
            "model %s (%s) warmed up on %s in %.2f s",
            self.name, self.precision, self.device, time.perf_counter() - t0,
        )  # fmt: skip

    def classify(self, batch: Sequence[np.ndarray]) -> list[Prediction]:
        """Classify utterances (float32 mono, 16 kHz); results in input order."""
        if not batch:
            return []
        speeds = self.tta_speeds
        # Each utterance at each test-time speed, utterance-major: rows i*k .. i*k+k-1.
        rows = [x if s == 1.0 else change_speed(x, s) for x in batch for s in speeds]
        probs = np.zeros((len(rows), len(self.labels)), np.float32)
        group_of = [0] * len(rows)
        group_ms: list[float] = []
        for g, group in enumerate(self._groups(rows)):
            t0 = time.perf_counter()
            probs[group] = self._forward([rows[i] for i in group])
            group_ms.append((time.perf_counter() - t0) * 1000.0)
            for i in group:
                group_of[i] = g
        k = len(speeds)
        out = []
        for u in range(len(batch)):
            mine = range(u * k, u * k + k)
            ms = sum(group_ms[g] for g in {group_of[i] for i in mine})
            out.append(self._prediction(probs[mine].mean(axis=0), ms))
        return out

    def _groups(self, batch: Sequence[np.ndarray]) -> list[list[int]]:
        return batch_groups([len(x) for x in batch], self.pads_batches)

    @torch.inference_mode()
    def _forward(self, xs: list[np.ndarray]) -> np.ndarray:
        if self.onnx is not None:  # equal lengths only (pads_batches is off): no mask
            values = self.extractor(xs, sampling_rate=MODEL_RATE_HZ, return_tensors="np")["input_values"]
            if self.encoder is not None:
                values = self.encoder(torch.from_numpy(values)).numpy()
            return torch.softmax(torch.from_numpy(self.onnx(values)), dim=-1).numpy()
        # A mask only where there is padding: with one it takes the model paths that skip it.
        padded = self.pads_to_shapes or len({len(x) for x in xs}) > 1
        feats = dict(
            self.extractor(
                xs,
                sampling_rate=MODEL_RATE_HZ,
                padding=True,
                return_attention_mask=padded,
                return_tensors="pt",
            )
        )
        if self.pads_to_shapes:
            feats = _pad_to_shape(feats)
        inputs = {k: self._to_device(v) for k, v in feats.items()}
        if self.clip_norm is not None and padded:
            self.clip_norm.samples = feats["attention_mask"].sum(-1)  # host copy: no device sync
        with _CUDNN_LOCK:
            cudnn_was = torch.backends.cudnn.enabled
            torch.backends.cudnn.enabled = cudnn_was and self.cudnn
            try:
                logits = self.model(**inputs).logits[: len(xs)].float()
            finally:
                torch.backends.cudnn.enabled = cudnn_was
                if self.clip_norm is not None:
                    self.clip_norm.samples = None
        return torch.softmax(logits, dim=-1).cpu().numpy()

    def _to_device(self, t: torch.Tensor) -> torch.Tensor:
        """A host tensor on the model's device, floats in the model's input dtype."""
        if self.device.type == "cuda":
            # Page-locked memory lets the copy run as DMA, without a staging copy by the driver.
            t = t.pin_memory()
        dtype = self.input_dtype if t.is_floating_point() else t.dtype
        return t.to(self.device, dtype, non_blocking=True)

    def _prediction(self, probs: np.ndarray, inference_ms: float) -> Prediction:
        order = np.argsort(-probs)[: max(1, self.top_k)]
        top = tuple((self.labels[i], float(probs[i])) for i in order)
        label, score = top[0]
        if score < self.min_score:
            label = self.unknown_label
        return Prediction(label, score, top, inference_ms)


def _pad_to_shape(feats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Input values and mask padded to the next SHAPE_STEP_SAMPLES and power-of-two batch size.

    Filler rows are silence marked as real, so no row has zero length; their outputs are dropped.
    """
    values, mask = feats["input_values"], feats["attention_mask"]
    rows, length = values.shape
    rows_to = 1 << (rows - 1).bit_length()
    length_to = -(-length // SHAPE_STEP_SAMPLES) * SHAPE_STEP_SAMPLES
    out_values = values.new_zeros(rows_to, length_to)
    out_values[:rows, :length] = values
    out_mask = mask.new_zeros(rows_to, length_to)
    out_mask[:rows, :length] = mask
    out_mask[rows:] = 1
    return {"input_values": out_values, "attention_mask": out_mask}


def trained_rate_hz(value: object, path: Path) -> int | None:
    """Check config.json's `TRAINED_RATE_KEY` value: the sample rate of the audio the checkpoint was
    trained on, or None where `intentd train` did not write it."""
    if value is None:
        return None
    whole = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    if not whole or isinstance(value, bool) or value <= 0:  # type: ignore[operator]
        raise ModelError(
            f"model folder {path}: config.json {TRAINED_RATE_KEY} must be a positive integer, "
            f"got {value!r}; fix it or remove the key"
        )
    return int(value)  # type: ignore[call-overload]


def tta_speeds(value: object, path: Path) -> tuple[float, ...]:
    """Check config.json's `TTA_SPEEDS_KEY` value: the speeds each utterance is classified at."""
    if value is None:
        return (1.0,)
    lo, hi = TTA_SPEED_RANGE
    numbers = isinstance(value, list) and all(
        isinstance(s, int | float) and not isinstance(s, bool) for s in value
    )
    if not numbers or not value or not all(lo <= s <= hi for s in value):  # type: ignore[union-attr]
        raise ModelError(
            f"model folder {path}: config.json {TTA_SPEEDS_KEY} must be a non-empty list of speeds "
            f"in [{lo}, {hi}], got {value!r}; fix it or remove the key"
        )
    return tuple(float(s) for s in value)  # type: ignore[union-attr]


def _load_onnx(
    path: Path, precision: str, bf16_encoder: bool
) -> tuple[object, object, ort.OrtModel, MatmulEncoder | None]:
    """The feature extractor, config, ONNX Runtime model and the conv encoder where it runs outside.

    The checkpoint is exported on first use.
    """
    _check_folder(path)
    extractor, cfg = _load_pretrained(path, AutoConfig)
    # int8 on AMX: the conv encoder as bf16 matmuls in torch, the rest in ONNX Runtime (58 % of
    # an ONNX int8 pass was fp32 convs; bench/RESULTS.md).
    split = precision == "int8" and bf16_encoder and cpu_has_amx() and encoder_supports(cfg)
    file = ort.cached_file(path, precision, features_in=split)
    if file.exists():  # the PyTorch weights are not needed, so they are not loaded
        log.info("loaded model %s (%d labels) from %s", path, cfg.num_labels, file)
    else:
        log.info("exporting model %s to ONNX (%s) once, into %s", path, precision, file.parent)
        _, model = _load(path, torch.device("cpu"))
        fold_weight_norm(model)
        ort.export(model, file, precision, features_in=split)
        del model
        release_freed_memory()
    ort.mark_used(file)
    encoder = MatmulEncoder.load(path, cfg) if split else None
    if encoder is not None:
        log.info("conv encoder of %s runs as bf16 matmuls (AMX), outside the ONNX graph", path.name)
    return extractor, cfg, ort.OrtModel(file, spin=encoder is None), encoder


def _check_folder(path: Path) -> None:
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


def _load_pretrained(path: Path, auto: type, **kwargs: Any) -> tuple[object, Any]:
    """The feature extractor and `auto.from_pretrained(path)`, with one error line for a bad folder."""
    # A daemon's log is no place for a weight-loading progress bar.
    hf_logging.disable_progress_bar()
    try:
        extractor = AutoFeatureExtractor.from_pretrained(str(path))
        loaded = auto.from_pretrained(str(path), **kwargs)
    except (OSError, ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"model folder {path} cannot be loaded: {first}") from e
    rate = getattr(extractor, "sampling_rate", MODEL_RATE_HZ)
    if rate != MODEL_RATE_HZ:
        raise ModelError(f"model folder {path} expects {rate} Hz audio; intentd feeds {MODEL_RATE_HZ} Hz")
    return extractor, loaded


def _load(path: Path, device: torch.device) -> tuple[object, torch.nn.Module]:
    _check_folder(path)
    extractor, model = _load_pretrained(path, AutoModelForAudioClassification, use_safetensors=True)
    model.eval().to(device)
    log.info("loaded model %s (%d labels) on %s", path, model.config.num_labels, device)
    return extractor, model
