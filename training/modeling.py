"""Build the feature extractor and classifier: a pretrained checkpoint or a from-scratch size."""

from __future__ import annotations

import logging
import re
from typing import Any

import torch
from datasets import Dataset

from intentd.errors import ModelError
from intentd_train.settings import ARCHITECTURES, TARGET_RATE_HZ, TrainConfig

log = logging.getLogger(__name__)

# SpecAugment span lengths in frames (25 or 50 frames/s): ~0.2-0.4 s of time, 16 channels.
MASK_TIME_LENGTH = 5
MASK_FEATURE_LENGTH = 16
_DEFAULT_LABEL = re.compile(r"^LABEL_\d+$")


def build(
    config: TrainConfig, names: list[str], ds: Dataset, label_column: str
) -> tuple[Any, Any, list[str], Dataset]:
    """Feature extractor, model, final label order, and the dataset re-encoded to that order."""
    if config.from_config is not None:
        extractor, model = _from_scratch(config, names)
    else:
        extractor, model, names, ds = _pretrained(config, names, ds, label_column)
    if config.freeze_feature_encoder:
        model.freeze_feature_encoder()
    # For gradient checkpointing, which the recipe never turns on, transformers marks the
    # waveform as needing a gradient in training mode: every backward then also computed one
    # for the input audio, ~5 % of a `small` step on this CPU. The parameters still learn.
    encoder = getattr(model.base_model, "feature_extractor", None)
    if hasattr(encoder, "_requires_grad"):
        encoder._requires_grad = False
    n = sum(p.numel() for p in model.parameters())
    log.info("model: %s, %.2f M parameters", type(model).__name__, n / 1e6)
    return extractor, model, names, ds


class FramedConv1d(torch.nn.Conv1d):
    """A one-channel, unpadded Conv1d computed as overlapping frames times the kernel matrix.

    The same parameters under the same names, so a checkpoint saved from it is a plain Wav2Vec2.
    On a CPU, oneDNN's weight gradient for the waveform layer (one input channel, a long kernel,
    a large stride) took 25 ms of a 220 ms `small` training step; as a matmul it is ~1 ms.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`[batch, 1, samples]` to `[batch, channels, frames]`, as `Conv1d` computes it."""
        frames = x[:, 0].unfold(-1, self.kernel_size[0], self.stride[0])  # a view, no copy
        y = frames @ self.weight[:, 0].T
        if self.bias is not None:
            y = y + self.bias
        return y.transpose(1, 2)


def frame_waveform_conv(model: Any) -> bool:
    """Swap the model's first (waveform) conv for a FramedConv1d; False if it does not qualify."""
    layer = model.wav2vec2.feature_extractor.conv_layers[0]
    conv = layer.conv
    if not (
        type(conv) is torch.nn.Conv1d
        and conv.in_channels == 1
        and conv.groups == 1
        and conv.dilation == (1,)
        and conv.padding == (0,)
    ):
        return False
    framed = FramedConv1d(1, conv.out_channels, conv.kernel_size, conv.stride, bias=conv.bias is not None).to(
        device=conv.weight.device, dtype=conv.weight.dtype
    )
    framed.weight = conv.weight
    framed.bias = conv.bias
    layer.conv = framed
    return True


def _label_maps(names: list[str]) -> tuple[dict[str, int], dict[int, str]]:
    return {n: i for i, n in enumerate(names)}, dict(enumerate(names))


def _from_scratch(config: TrainConfig, names: list[str]) -> tuple[Any, Any]:
    from transformers import (
        AutoModelForAudioClassification,
        Wav2Vec2Config,
        Wav2Vec2FeatureExtractor,
    )

    arch = ARCHITECTURES[config.from_config]  # type: ignore[index]
    # Per-utterance normalisation plus an attention mask: padded batches equal single clips,
    # which the daemon's batcher relies on.
    extractor = Wav2Vec2FeatureExtractor(
        feature_size=1,
        sampling_rate=TARGET_RATE_HZ,
        padding_value=0.0,
        do_normalize=True,
        return_attention_mask=True,
    )
    label2id, id2label = _label_maps(names)
    model_config = Wav2Vec2Config(
        conv_dim=arch.conv_dim,
        conv_kernel=arch.conv_kernel,
        conv_stride=arch.conv_stride,
        hidden_size=arch.hidden_size,
        num_hidden_layers=arch.num_hidden_layers,
        num_attention_heads=arch.num_attention_heads,
        intermediate_size=arch.intermediate_size,
        num_conv_pos_embeddings=arch.num_conv_pos_embeddings,
        num_conv_pos_embedding_groups=arch.num_conv_pos_embedding_groups,
        classifier_proj_size=arch.classifier_proj_size,
        # Layer norm in every conv layer and pre-norm transformer blocks: the variants that
        # train stably from scratch (wav2vec2-large-lv60 uses them too).
        feat_extract_norm="layer",
        do_stable_layer_norm=True,
        layerdrop=0.0,
        # The classifier also sees the conv features directly (layer 0): a from-scratch
        # transformer sits at chance for epochs, the CNN path gives it a signal from step one.
        # Off, it reads the last layer only, the one the transcript (CTC) head spells from.
        use_weighted_layer_sum=config.layer_sum,
        # No dropout on the attention weights and the feed-forward's inner activations
        # (wav2vec2's own pretraining config has none on the latter): drawing their masks was
        # a fifth of a CPU training step, and a from-scratch model here underfits in its
        # budget (held-out accuracy equals training accuracy). Residual dropout stays.
        attention_dropout=0.0,
        activation_dropout=0.0,
        mask_time_prob=config.mask_time_prob,
        mask_time_length=MASK_TIME_LENGTH,
        mask_feature_prob=config.mask_feature_prob,
        mask_feature_length=MASK_FEATURE_LENGTH,
        num_labels=len(names),
        label2id=label2id,
        id2label=id2label,
    )
    return extractor, AutoModelForAudioClassification.from_config(model_config)


def _pretrained(
    config: TrainConfig, names: list[str], ds: Dataset, label_column: str
) -> tuple[Any, Any, list[str], Dataset]:
    from transformers import AutoConfig, AutoFeatureExtractor, AutoModelForAudioClassification

    base = config.base_model
    try:
        base_config = AutoConfig.from_pretrained(base)
        extractor = AutoFeatureExtractor.from_pretrained(base)
    except (OSError, ValueError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ModelError(f"--base-model {base}: cannot be loaded ({first})") from e
    base_labels = [base_config.id2label[i] for i in sorted(base_config.id2label)]
    has_head = base_labels and not all(_DEFAULT_LABEL.match(str(n)) for n in base_labels)
    if has_head and set(base_labels) != set(names):
        extra = sorted(set(names) - set(base_labels))[:3]
        missing = sorted(set(base_labels) - set(names))[:3]
        raise ModelError(
            f"--base-model {base}: its labels do not match the data's "
            f"(data only: {extra or '-'}, checkpoint only: {missing or '-'}); "
            "train from a checkpoint without a classification head or relabel the data"
        )
    if has_head and base_labels != names:
        # Same intents, different order: keep the checkpoint's head and renumber the data.
        ds = ds.align_labels_with_mapping({n: i for i, n in enumerate(base_labels)}, label_column)
        names = base_labels
    label2id, id2label = _label_maps(names)
    model = AutoModelForAudioClassification.from_pretrained(
        base,
        num_labels=len(names),
        label2id=label2id,
        id2label=id2label,
        mask_time_prob=config.mask_time_prob,
        mask_feature_prob=config.mask_feature_prob,
    )
    return extractor, model, names, ds
