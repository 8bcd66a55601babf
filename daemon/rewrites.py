"""In-place rewrites of a loaded PyTorch classifier for inference: exact norms, folded weights, int8, bf16."""

from __future__ import annotations

import ctypes
import gc
import logging
import warnings

import torch
from torch.nn.utils import parametrize

log = logging.getLogger(__name__)

# Model types whose only time-wide operation before the masked transformer is the first conv
# layer's GroupNorm (checked exact). SEW, with the same first layer, pools over time: not exact.
CLIP_NORM_MODEL_TYPES = ("wav2vec2", "hubert", "wavlm", "unispeech", "unispeech-sat")


class ClipLengthNorm(torch.nn.Module):
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
    def install(cls, model: torch.nn.Module) -> ClipLengthNorm | None:
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


def fold_weight_norm(model: torch.nn.Module) -> None:
    """Bake weight-norm parametrizations into plain weights, in place (same values, exactly).

    wav2vec2's positional conv keeps its weight as norm x direction and rebuilds the 768x48x128
    kernel on every forward pass; for inference that is wasted work (int8: 13 % of the pass on CPU).
    """
    with torch.no_grad():
        for module in model.modules():
            if parametrize.is_parametrized(module):
                for name in list(module.parametrizations):
                    parametrize.remove_parametrizations(module, name, leave_parametrized=True)


def cpu_has_amx() -> bool:
    """Whether this CPU has AMX tiles (bf16 matmuls several times fp32's speed)."""
    return bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AVX512-BF16 or AMX), not by emulation."""
    return cpu_has_amx() or bool(getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)())


class Bf16Convs(torch.nn.Module):
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


def quantize_linear(model: torch.nn.Module) -> None:
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
    release_freed_memory()


def release_freed_memory() -> None:
    """Hand the fp32 copies glibc keeps in its heap back to the OS (RSS 890 -> 550 MB for base)."""
    gc.collect()  # the replaced modules sit in reference cycles until a collection
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the memory is reused, just not returned
        log.debug("malloc_trim unavailable; freed model memory stays in the heap")
