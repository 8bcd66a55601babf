"""wav2vec2's conv feature encoder as bfloat16 matmuls over frames, for CPUs with AMX.

ONNX Runtime runs the int8 transformer well but the conv encoder in fp32, and there the encoder
was 58 % of a wav2vec2-base pass (conv layer 1 alone 28 ms of 115 on a 3 s clip). On AMX, a conv
layer written as overlapping frames times the kernel matrix in bf16 took 5 ms. The catch is the
layout: the matmul gives `[batch, frames, channels]`, and transposing that to the conv layout
cost as much as the matmul saved, so this encoder stays in the frames-first layout throughout,
and the ONNX graph it feeds starts from it (`intentd.ort`, `features` input).
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
    return (
        getattr(cfg, "model_type", None) == "wav2vec2"
        and max(getattr(cfg, "conv_dim", (0,))) >= MIN_CHANNELS
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
                    weights, shift = self._first_group_norm(frames, layer)
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

    @staticmethod
    def _first_group_norm(frames: torch.Tensor, layer: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Conv layer 0's kernels and bias with its per-channel GroupNorm over time folded in, per clip.

        A channel's output is frames @ w, so its mean over time is mean(frames) @ w and its
        variance w' C w, with C the frames' k x k covariance. Normalising is then a per-clip scale
        of each kernel row and a bias; the conv bias cancels out.
        """
        f = frames.float()
        mean = f.mean(dim=1)  # [batch, k]
        centred = f - mean[:, None]
        cov = centred.transpose(1, 2) @ centred / f.shape[1]  # [batch, k, k]
        w = layer["weight"]  # [channels, k]
        var = torch.einsum("ck,bkl,cl->bc", w, cov, w)
        scale = layer["norm_weight"] * torch.rsqrt(var + NORM_EPS)  # [batch, channels]
        shift = layer["norm_bias"] - (mean @ w.T) * scale
        kernels = w[None] * scale[..., None]  # [batch, channels, k]
        return kernels.to(torch.bfloat16), shift.to(torch.bfloat16)
