"""The classifier: any local Hugging Face audio-classification checkpoint, batched correctly."""

from __future__ import annotations

import ctypes
import gc
import logging
import threading
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn.utils import parametrize
from transformers import AutoFeatureExtractor, AutoModelForAudioClassification
from transformers.utils import logging as hf_logging

from intentd.errors import ModelError
from intentd.resample import MODEL_RATE_HZ

log = logging.getLogger(__name__)

WARMUP_S = 1.0
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "int8")
# config.json key `intentd train` writes: the sample rate of the audio the model was trained on
# (the highest among its training clips). Input wider than that is band-limited to it.
TRAINED_RATE_KEY = "intentd_trained_rate_hz"
# Clips whose lengths are within this ratio of each other share a forward pass: sorted length
# buckets keep padding (work spent on zeros) under 25 % of a batch.
MAX_PAD_RATIO = 1.25
# On cuda each new input shape costs kernel selection (a cuDNN plan per conv layer) and allocator
# growth, and utterance lengths never repeat. Where padding is exact, batches are padded up to a
# length grid and a power-of-two batch size, so a running daemon sees a few dozen shapes.
SHAPE_STEP_SAMPLES = 4_000  # 0.25 s
# Model types whose only time-wide operation before the masked transformer is the first conv
# layer's GroupNorm (checked exact). SEW, with the same first layer, pools over time: not exact.
CLIP_NORM_MODEL_TYPES = ("wav2vec2", "hubert", "wavlm", "unispeech", "unispeech-sat")
# torch's cuDNN switch is one per process; a reload warms a new model while the old one serves.
_CUDNN_LOCK = threading.Lock()


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
    ) -> None:
        """`bf16_encoder`: with int8, run the conv layers in bf16 where the CPU has it natively."""
        self.path = Path(path)
        self.device = resolve_device(device)
        self.precision = precision
        # Checked before loading, so a bad combination fails in milliseconds, not after the load.
        self.dtype = compute_dtype(self.device, precision)
        self.top_k = top_k
        self.cudnn = cudnn
        self.min_score = min_score
        self.unknown_label = unknown_label
        self.extractor, self.model = _load(self.path, self.device)
        _fold_weight_norm(self.model)
        cfg = self.model.config
        self.labels = [cfg.id2label[i] for i in range(cfg.num_labels)]
        self.name = self.path.resolve().name
        self.trained_rate_hz = trained_rate_hz(getattr(cfg, TRAINED_RATE_KEY, None), self.path)
        if self.trained_rate_hz is not None and self.trained_rate_hz < MODEL_RATE_HZ:
            log.info(
                "model %s was trained on %d Hz audio: input is band-limited to %d Hz",
                self.name, self.trained_rate_hz, self.trained_rate_hz // 2,
            )  # fmt: skip
        # Clips of different lengths share a pass when padding cannot change their results: the
        # checkpoint takes an attention mask, or its one time-wide norm is made to skip the padding.
        self.clip_norm = _ClipLengthNorm.install(self.model)
        self.mixes_lengths = self.clip_norm is not None or bool(
            getattr(self.extractor, "return_attention_mask", False)
        )
        # Only on cuda do mixed lengths share a pass: on a CPU a batch of one already fills the
        # cores, so padding is only extra work (batch 1 was 14-16 % faster than padded batches of 8).
        self.pads_batches = self.mixes_lengths and self.device.type == "cuda"
        self.pads_to_shapes = self.pads_batches
        self.bf16_encoder = False
        if self.dtype == torch.float16:
            self.model.half()
        elif self.dtype == torch.qint8:
            _quantize_linear(self.model)
            if bf16_encoder and cpu_has_native_bf16():
                self.bf16_encoder = _Bf16Convs.install(self.model)
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
        out: list[Prediction | None] = [None] * len(batch)
        for group in self._groups(batch):
            t0 = time.perf_counter()
            probs = self._forward([batch[i] for i in group])
            ms = (time.perf_counter() - t0) * 1000.0
            for i, p in zip(group, probs, strict=True):
                out[i] = self._prediction(p, ms)
        return [p for p in out if p is not None]

    def _groups(self, batch: Sequence[np.ndarray]) -> list[list[int]]:
        return batch_groups([len(x) for x in batch], self.pads_batches)

    @torch.inference_mode()
    def _forward(self, xs: list[np.ndarray]) -> np.ndarray:
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


class _ClipLengthNorm(torch.nn.Module):
    """wav2vec2's first-layer GroupNorm, computed over each clip's own frames in a padded batch.

    Checkpoints like wav2vec2-base normalise each channel of the first conv layer over the whole
    clip, so zeros padded onto a short clip would shift its statistics and its scores. That is the
    one place where time positions mix before the transformer, and the transformer and pooling take
    the attention mask. With this norm, a clip in a padded batch scores what it scores alone.
    """

    def __init__(self, norm: torch.nn.GroupNorm, conv: torch.nn.Conv1d) -> None:
        super().__init__()
        self.norm = norm
        self.kernel = int(conv.kernel_size[0])
        self.stride = int(conv.stride[0])
        self.samples: torch.Tensor | None = None  # real samples of each clip in the batch being run

    @classmethod
    def install(cls, model: torch.nn.Module) -> _ClipLengthNorm | None:
        """Put one in place of the model's first-layer GroupNorm; None where there is none to replace."""
        layers = getattr(getattr(model.base_model, "feature_extractor", None), "conv_layers", None)
        first = layers[0] if layers else None
        norm = getattr(first, "layer_norm", None)
        conv = getattr(first, "conv", None)
        if not (isinstance(norm, torch.nn.GroupNorm) and isinstance(conv, torch.nn.Conv1d)):
            return None
        if norm.num_groups != norm.num_channels or not norm.affine:
            return None
        if getattr(model.config, "model_type", None) not in CLIP_NORM_MODEL_TYPES:
            return None
        if conv.padding != (0,) or conv.dilation != (1,):  # the frame count below assumes both
            return None
        first.layer_norm = cls(norm, conv)
        return first.layer_norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, channels, frames) normalised per clip and channel over that clip's frames."""
        if self.samples is None:  # no padding in this batch
            return self.norm(x)
        frames = ((self.samples - self.kernel) // self.stride + 1).tolist()
        if min(frames) < 1:
            raise ValueError("a clip is shorter than the model's first convolution")
        weight, bias = self.norm.weight.float()[:, None], self.norm.bias.float()[:, None]
        # Row by row, in fp32 like GroupNorm, written back in place: a batch of long clips makes
        # the conv output large, and one fp32 row at a time keeps the extra memory bounded.
        for i, n in enumerate(frames):
            row = x[i].float()
            var, mean = torch.var_mean(row[:, :n], dim=-1, unbiased=False, keepdim=True)
            x[i].copy_((row - mean) * torch.rsqrt(var + self.norm.eps) * weight + bias)
        return x


def _fold_weight_norm(model: torch.nn.Module) -> None:
    """Bake weight-norm parametrizations into plain weights, in place (same values, exactly).

    wav2vec2's positional conv keeps its weight as norm x direction and rebuilds the 768x48x128
    kernel on every forward pass; for inference that is wasted work (int8: 13 % of the pass on CPU).
    """
    with torch.no_grad():
        for module in model.modules():
            if parametrize.is_parametrized(module):
                for name in list(module.parametrizations):
                    parametrize.remove_parametrizations(module, name, leave_parametrized=True)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AVX512-BF16 or AMX), not by emulation."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


class _Bf16Convs(torch.nn.Module):
    """A conv block run in bfloat16, taking and giving float32.

    Dynamic quantisation makes only Linear layers int8; after it the conv feature encoder and the
    positional conv are most of the time. On CPUs with native bf16 they run faster in it (on
    wav2vec2-base: the encoder about 2.4x, the positional conv 1.5x); their outputs feed the same
    fp32 LayerNorms.
    """

    def __init__(self, block: torch.nn.Module) -> None:
        super().__init__()
        self.block = block.to(torch.bfloat16)

    @classmethod
    def install(cls, model: torch.nn.Module) -> bool:
        """Wrap the model's conv feature encoder and positional conv; False where it has neither."""
        base = model.base_model
        encoder = getattr(base, "feature_extractor", None)
        wrapped = False
        if isinstance(encoder, torch.nn.Module) and hasattr(encoder, "conv_layers"):
            base.feature_extractor = cls(encoder)
            wrapped = True
        inner = getattr(base, "encoder", None)
        pos_conv = getattr(inner, "pos_conv_embed", None)
        if isinstance(pos_conv, torch.nn.Module) and hasattr(pos_conv, "conv"):
            inner.pos_conv_embed = cls(pos_conv)
            wrapped = True
        return wrapped

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """float32 in, float32 out, in the wrapped block's own layout."""
        return self.block(x.to(torch.bfloat16)).float()


def _quantize_linear(model: torch.nn.Module) -> None:
    """Swap every Linear for a dynamically quantised int8 one, in place (the fp32 weights are freed)."""
    # The loader maps the safetensors file; a mapping whose tensors are still referenced stays
    # resident, so quantising alone keeps all fp32 weights in RSS (930 MB vs 600 MB for base).
    # Copying first lets the mapping go once the Linear weights are replaced.
    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            t.data = t.data.clone()
    with warnings.catch_warnings():
        # torch marks torch.ao quantisation deprecated (moving to torchao); it still works in 2.13.
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.ao\.")
        warnings.filterwarnings("ignore", message=r"torch\.ao\.quantization is deprecated")
        from torch.ao.quantization import quantize_dynamic

        quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)
    _release_freed_memory()


def _release_freed_memory() -> None:
    """Hand the fp32 copies glibc keeps in its heap back to the OS (RSS 890 -> 550 MB for base)."""
    gc.collect()  # the replaced modules sit in reference cycles until a collection
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the memory is reused, just not returned
        log.debug("malloc_trim unavailable; freed model memory stays in the heap")


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
