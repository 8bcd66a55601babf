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
from pathlib import Path

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

PREFIX = "wav2vec2.feature_extractor.conv_layers."
NORMS = ("group", "layer")
# Narrower encoders are cheap in ONNX Runtime too, and handing over between two runtimes costs
# more than the matmuls save: the 144-channel demo model took 2.7 ms a clip split, 2.0 whole.
MIN_CHANNELS = 256
NORM_EPS = 1e-5  # torch's GroupNorm and LayerNorm default, which wav2vec2's layers use


def cpu_has_amx() -> bool:
    """Whether this CPU has AMX tiles (bf16 matmuls several times fp32's speed)."""
    return bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())


def supports(cfg: object) -> bool:
    """Whether `cfg` describes an encoder this module computes and that pays to take out of ONNX:
    wav2vec2, GELU, group or layer norm, wide conv layers."""
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
            w = weights[f"{PREFIX}{i}.conv.weight"].float()  # [out, in, kernel]
            layer = {
                "weight": w.reshape(w.shape[0], -1),  # rows match frames flattened as (in, kernel)
                "bias": weights.get(f"{PREFIX}{i}.conv.bias"),
                "norm_weight": weights.get(f"{PREFIX}{i}.layer_norm.weight"),
                "norm_bias": weights.get(f"{PREFIX}{i}.layer_norm.bias"),
            }
            layer["weight_bf16"] = layer["weight"].to(torch.bfloat16)
            self.layers.append(layer)

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
        h = values.float()
        for i, layer in enumerate(self.layers):
            k, s = self.kernels[i], self.strides[i]
            if i == 0:
                frames = h.unfold(-1, k, s)  # [batch, frames, k]: a view
            else:  # [batch, frames, channels] -> [batch, frames', channels * k], one copy
                frames = h.unfold(1, k, s)
                frames = frames.reshape(frames.shape[0], frames.shape[1], -1)
            if i == 0 and self.group_norm:
                y = self._first_group_norm(frames, layer)
            else:
                y = frames.to(torch.bfloat16) @ layer["weight_bf16"].T
                if layer["bias"] is not None:
                    y = y + layer["bias"].to(y.dtype)
                if not self.group_norm:
                    y = F.layer_norm(y, y.shape[-1:], layer["norm_weight"].to(y.dtype),
                                     layer["norm_bias"].to(y.dtype), NORM_EPS)  # fmt: skip
            h = F.gelu(y)
        return h.float()

    @staticmethod
    def _first_group_norm(frames: torch.Tensor, layer: dict) -> torch.Tensor:
        """Conv layer 0 and its per-channel GroupNorm over time, as one bf16 matmul per clip.

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
        kernels = (w[None] * scale[..., None]).to(torch.bfloat16)  # [batch, channels, k]
        return torch.baddbmm(shift[:, None].to(torch.bfloat16), frames.to(torch.bfloat16),
                             kernels.transpose(1, 2))  # fmt: skip
