"""An auxiliary CTC head on the transcript: from scratch, it teaches the encoder words.

A Wav2Vec2 trained from random weights on intent labels alone sits at chance for thousands of
steps and then memorises whole sentences; it has nothing that says "these sounds are the word
*balance*". The corpus knows what every clip says, so during training a character CTC head on
the last hidden layer gets that as a second loss. Only the classifier is saved: the head is a
training aid, and the checkpoint stays a plain `Wav2Vec2ForSequenceClassification`.
"""

from __future__ import annotations

import re
import string
from typing import Any

import torch
from torch import nn

TEXT_COLUMNS = ("text", "transcription")  # our corpus's metadata.csv, MInDS-14
CHARSET = " " + string.ascii_lowercase + "'"
BLANK = 0  # CTC blank; CHARSET[i] is token i + 1
_DROP = re.compile(r"[,.?!;:\"()\-]")
_SPACES = re.compile(r"\s+")


def encode(text: str) -> list[int] | None:
    """Token ids of `text` for CTC, or None when it holds something unspoken as written (digits)."""
    t = _SPACES.sub(" ", _DROP.sub(" ", text.lower())).strip()
    if not t or any(c not in CHARSET for c in t):
        return None
    return [CHARSET.index(c) + 1 for c in t]


class WithTranscriptHead(nn.Module):
    """The classifier plus a CTC head; `forward` returns both losses summed as one."""

    def __init__(self, classifier: Any, ctc_weight: float) -> None:
        super().__init__()
        self.classifier = classifier
        self.ctc_weight = ctc_weight
        self.ctc_head = nn.Linear(classifier.config.hidden_size, len(CHARSET) + 1)

    def forward(
        self,
        input_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        transcript: torch.Tensor | None = None,
        transcript_lengths: torch.Tensor | None = None,
    ) -> Any:
        """Intent logits; with labels, loss = intent CE + ctc_weight * transcript CTC."""
        keep = None if transcript_lengths is None else (transcript_lengths > 0).nonzero().squeeze(1)
        with_ctc = transcript is not None and keep is not None and keep.numel() > 0
        out = self.classifier(
            input_values,
            attention_mask=attention_mask,
            labels=labels,
            output_hidden_states=with_ctc,
        )
        if not with_ctc or out.loss is None:
            return out
        samples = (
            attention_mask.sum(-1)
            if attention_mask is not None
            else torch.full((input_values.shape[0],), input_values.shape[-1])
        )
        frames = self.classifier.wav2vec2._get_feat_extract_output_lengths(samples)
        log_probs = self.ctc_head(out.hidden_states[-1]).float().log_softmax(-1).transpose(0, 1)
        ctc = nn.functional.ctc_loss(
            log_probs[:, keep],
            transcript[keep],  # padded (N, S): ctc_loss reads each row up to its length
            frames[keep],
            transcript_lengths[keep],
            blank=BLANK,
            zero_infinity=True,
        )
        out.loss = out.loss + self.ctc_weight * ctc
        out.hidden_states = None
        return out
