"""wav2vec2's conv feature encoder as bfloat16 matmuls over frames, for CPUs with AMX.

ONNX Runtime runs the int8 transformer well but the conv encoder in fp32, and there the encoder
was 58 % of a wav2vec2-base pass (conv layer 1 alone 28 ms of 115 on a 3 s clip). On AMX, a conv
layer written as overlapping frames times the kernel matrix in bf16 took 5 ms. The catch is the
layout: the matmul gives `[batch, frames, channels]`, and transposing that to the conv layout
cost as much as the matmul saved, so this encoder stays in the frames-first layout throughout,
and the ONNX graph it feeds starts from it (`intentd.ort`, `features` input).

Without AMX, `GraphEncoder` writes the same products as ONNX MatMuls inside the graph, so that
ONNX Runtime's int8 quantiser covers the encoder too.
"""

from __future__ import annotations

import logging
import math
import threading
from pathlib import Path

import torch
import torch.nn.functional as F

from intentd.errors import ModelError

log = logging.getLogger(__name__)

PREFIX = "wav2vec2.feature_extractor.conv_layers."
NORMS = ("group", "layer")
# Narrower encoders are cheap in ONNX Runtime too, and handing over between two runtimes costs
# more than the matmuls save: the 144-channel demo model took 2.7 ms a clip split, 2.0 whole.
MIN_CHANNELS = 256
# GraphEncoder's buffer of the waveform layer's kernel matrix: int8 leaves its product in fp32.
WAVEFORM_WEIGHT = "weight0"
NORM_EPS = 1e-5  # torch's GroupNorm and LayerNorm default, which wav2vec2's layers use
# oneDNN builds a kernel for each new matmul shape, which doubled the encoder's time on every new
# utterance length; rows padded to a multiple of this bound the shapes (blocks of fixed size
# instead ran at half the speed of one whole-clip product).
ROW_STEP = 512
# Kept buffers are bounded: wav2vec2-base's largest, layer 0's output, is 16 MB for a 5 s clip;
# 32 MB keeps up to ~10 s at batch 1, and anything larger is allocated per call.
ARENA_MAX_ELEMENTS = 16 * 1024 * 1024
ARENA_GROWTH = 1.25  # a buffer grows to 1.25x what it must hold, so a longer clip rarely regrows it


def supports(cfg: object) -> bool:
    """Whether `cfg`'s encoder is one this module computes and that pays to take out of ONNX.

    wav2vec2, GELU, group or layer norm, conv layers at least MIN_CHANNELS wide.
    """
    return graph_supports(cfg) and max(getattr(cfg, "conv_dim", (0,))) >= MIN_CHANNELS


def graph_supports(cfg: object) -> bool:
    """Whether `cfg`'s conv encoder is one `GraphEncoder` computes: wav2vec2, GELU, group or layer norm."""
    return (
        getattr(cfg, "model_type", None) == "wav2vec2"
        and getattr(cfg, "feat_extract_activation", None) == "gelu"
        and getattr(cfg, "feat_extract_norm", None) in NORMS
    )


class MatmulEncoder:
    """Normalised 16 kHz audio `[batch, samples]` to conv features `[batch, frames, channels]` (fp32).

    Each clip in a batch is normalised over its own frames (the ONNX path runs equal lengths only).
    """

    def __init__(self, cfg: object, weights: dict[str, torch.Tensor]) -> None:
        self.kernels = [int(k) for k in cfg.conv_kernel]  # type: ignore[attr-defined]
        self.strides = [int(s) for s in cfg.conv_stride]  # type: ignore[attr-defined]
        self.group_norm = cfg.feat_extract_norm == "group"  # type: ignore[attr-defined]
        self.layers = []
        for i in range(len(self.kernels)):
            key = f"{PREFIX}{i}.conv.weight"
            if key not in weights:
                raise ModelError(f"checkpoint has no tensor {key}; it is not a wav2vec2 conv encoder")
            w = weights[key].float()  # [out, in, kernel]
            w = w.reshape(w.shape[0], -1)  # rows match frames flattened as (in, kernel)
            layer = {
                "weight_bf16": w.to(torch.bfloat16),
                "bias": weights.get(f"{PREFIX}{i}.conv.bias"),
                "norm_weight": weights.get(f"{PREFIX}{i}.layer_norm.weight"),
                "norm_bias": weights.get(f"{PREFIX}{i}.layer_norm.bias"),
            }
            if i == 0:  # the GroupNorm fold needs layer 0's kernels in fp32; the rest run in bf16 only
                layer["weight"] = w
            self.layers.append(layer)
        self._arena: dict[str, torch.Tensor] = {}  # bf16 buffers kept between calls
        self._lock = threading.Lock()  # one call at a time uses the buffers

    @classmethod
    def load(cls, path: Path, cfg: object) -> MatmulEncoder:
        """Read only the encoder's tensors from the checkpoint's safetensors file(s)."""
        from safetensors import safe_open

        weights: dict[str, torch.Tensor] = {}
        for file in sorted(path.glob("*.safetensors")):
            with safe_open(str(file), framework="pt") as f:
                for key in f.keys():
                    if key.startswith(PREFIX):
                        weights[key] = f.get_tensor(key)
        return cls(cfg, weights)

    @torch.inference_mode()
    def __call__(self, values: torch.Tensor) -> torch.Tensor:
        """`[batch, samples]` float32 to `[batch, frames, channels]` float32."""
        with self._lock:
            h = values.float()
            for i, layer in enumerate(self.layers):
                k, s = self.kernels[i], self.strides[i]
                frames = h.unfold(-1, k, s) if i == 0 else h.unfold(1, k, s)  # views
                # [batch, frames, (channels,) k] -> [batch, frames padded, channels * k]: one copy
                rows = self._rows(f"frames{i}", frames)
                if i == 0 and self.group_norm:
                    weights, shift = fold_first_group_norm(
                        frames, layer["weight"], layer["norm_weight"], layer["norm_bias"]
                    )
                    weights, shift = weights.to(torch.bfloat16), shift.to(torch.bfloat16)
                    y = self._buffer("out0", (*rows.shape[:2], weights.shape[1]))
                    torch.baddbmm(shift[:, None], rows, weights.transpose(1, 2), out=y)
                else:
                    y = self._buffer(f"out{i}", (*rows.shape[:2], layer["weight_bf16"].shape[0]))
                    torch.matmul(rows, layer["weight_bf16"].T, out=y)
                    if layer["bias"] is not None:
                        y += layer["bias"].to(y.dtype)
                y = y[:, : frames.shape[1]]
                if not self.group_norm:
                    y = F.layer_norm(y, y.shape[-1:], layer["norm_weight"].to(y.dtype),
                                     layer["norm_bias"].to(y.dtype), NORM_EPS)  # fmt: skip
                h = torch.ops.aten.gelu.out(y, out=y)  # in place
            return h.float()

    def _rows(self, name: str, frames: torch.Tensor) -> torch.Tensor:
        """`frames` as bf16 rows in a kept buffer, padded to a multiple of ROW_STEP rows."""
        batch, n = frames.shape[:2]
        width = math.prod(frames.shape[2:])
        rows = self._buffer(name, (batch, -(-n // ROW_STEP) * ROW_STEP, width))
        # Rows past n keep stale values: each output row depends on its own row only, and those
        # outputs are dropped.
        rows[:, :n].view(frames.shape).copy_(frames)
        return rows

    def _buffer(self, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        """A bf16 view of a kept buffer, grown when needed.

        Fresh memory for every new utterance length cost 7,500 page faults a 2.5 s clip.
        """
        numel = math.prod(shape)
        if numel > ARENA_MAX_ELEMENTS:  # a rare long segment or large batch: not kept
            return torch.empty(shape, dtype=torch.bfloat16)
        buf = self._arena.get(name)
        if buf is None or buf.numel() < numel:
            buf = torch.empty(int(numel * ARENA_GROWTH), dtype=torch.bfloat16)
            self._arena[name] = buf
        return buf[:numel].view(shape)


def fold_first_group_norm(
    frames: torch.Tensor, weight: torch.Tensor, norm_weight: torch.Tensor, norm_bias: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Conv layer 0's kernels `[batch, channels, k]` and bias `[batch, channels]` with its
    per-channel GroupNorm over time folded in, per clip, from its input `frames` `[batch, n, k]`.

    A channel's output is frames @ w, so its mean over time is mean(frames) @ w and its
    variance w' C w, with C the frames' k x k covariance. Normalising is then a per-clip scale
    of each kernel row and a bias; the conv bias cancels out. This skips a pass over layer 0's
    output, the encoder's largest tensor.
    """
    f = frames.float()
    mean = f.mean(dim=1)  # [batch, k]
    centred = f - mean[:, None]
    cov = centred.transpose(1, 2) @ centred / f.shape[1]  # [batch, k, k]
    var = ((weight @ cov) * weight).sum(-1)  # [batch, channels]
    scale = norm_weight * torch.rsqrt(var + NORM_EPS)
    shift = norm_bias - (mean @ weight.T) * scale
    return weight[None] * scale[..., None], shift


class GraphEncoder(torch.nn.Module):
    """The conv encoder as tap gathers and MatMuls, written to be exported inside the ONNX graph.

    ONNX Runtime's dynamic quantiser makes MatMuls int8 but leaves Convs in fp32 (its ConvInteger
    was slower than them), and on a CPU without AMX those fp32 convs were half of an int8 pass.
    Here each layer gathers its k taps with strided slices, concatenated channels-last, and
    multiplies by the kernel matrix: MatMuls the quantiser covers. Layer 0, on the waveform,
    stays fp32 (under 1 % of the encoder's arithmetic): with GroupNorm its kernels are made per
    clip (`fold_first_group_norm`), which the quantiser leaves alone, and with LayerNorm
    `intentd.ort` excludes its `WAVEFORM_WEIGHT` product. Takes `[batch, samples]`, returns
    `[batch, channels, frames]` like the module it replaces; ONNX Runtime drops the transposes.
    """

    def __init__(self, cfg: object, conv_layers: torch.nn.ModuleList) -> None:
        super().__init__()
        self.kernels = [int(k) for k in cfg.conv_kernel]  # type: ignore[attr-defined]
        self.strides = [int(s) for s in cfg.conv_stride]  # type: ignore[attr-defined]
        self.group_norm = cfg.feat_extract_norm == "group"  # type: ignore[attr-defined]
        for i, layer in enumerate(conv_layers):
            w = layer.conv.weight.detach().float()  # [out, in, k]
            # Rows are taps concatenated channels-last, (k, in): the matrix is ordered to match.
            self.register_buffer(f"weight{i}", w.permute(2, 1, 0).reshape(-1, w.shape[0]).contiguous())
            norm = getattr(layer, "layer_norm", None)
            for name, t in (("bias", layer.conv.bias), ("norm_weight", getattr(norm, "weight", None)),
                            ("norm_bias", getattr(norm, "bias", None))):  # fmt: skip
                self.register_buffer(f"{name}{i}", None if t is None else t.detach().float())

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        """`[batch, samples]` normalised audio to `[batch, channels, frames]` features."""
        h = values[:, :, None]  # frames-first throughout: [batch, frames, channels]
        for i, (k, s) in enumerate(zip(self.kernels, self.strides, strict=True)):
            n = (h.shape[1] - k) // s + 1
            rows = torch.cat([h[:, j : j + s * (n - 1) + 1 : s] for j in range(k)], dim=-1)
            weight, bias = getattr(self, f"weight{i}"), getattr(self, f"bias{i}")
            norm_weight, norm_bias = getattr(self, f"norm_weight{i}"), getattr(self, f"norm_bias{i}")
            if i == 0 and self.group_norm:
                kernels, shift = fold_first_group_norm(rows, weight.T, norm_weight, norm_bias)
                y = rows @ kernels.transpose(1, 2) + shift[:, None]
            else:
                y = rows @ weight
                if bias is not None:
                    y = y + bias
                if norm_weight is not None:  # layer norm; group norm is on layer 0 only, folded above
                    y = F.layer_norm(y, norm_weight.shape, norm_weight, norm_bias, NORM_EPS)
            h = F.gelu(y)
        return h.transpose(1, 2)
