"""Tiny Wav2Vec2 checkpoints built from a config, saved like any Hugging Face checkpoint."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2ForSequenceClassification

INTENTS = (
    "abroad", "address", "app_error", "atm_limit", "balance", "business_loan", "card_issues",
    "cash_deposit", "direct_debit", "freeze", "high_value_payment", "joint_account",
    "latest_transactions", "pay_bill",
)  # fmt: skip


def save_tiny_checkpoint(
    out: Path, with_attention_mask: bool = True, seed: int = 0, **config_overrides: object
) -> Path:
    """A randomly initialised ~40k-parameter Wav2Vec2 classifier; `layer` norm when it takes a mask."""
    torch.manual_seed(seed)
    settings: dict[str, object] = dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=(32,) * 7,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
        classifier_proj_size=32,
        feat_extract_norm="layer" if with_attention_mask else "group",
        num_labels=len(INTENTS),
        id2label=dict(enumerate(INTENTS)),
        label2id={label: i for i, label in enumerate(INTENTS)},
    )
    cfg = Wav2Vec2Config(**{**settings, **config_overrides})
    model = Wav2Vec2ForSequenceClassification(cfg)
    extractor = Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True,
        return_attention_mask=with_attention_mask,
    )  # fmt: skip
    model.save_pretrained(out)
    extractor.save_pretrained(out)
    return out
