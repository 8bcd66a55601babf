"""An auxiliary CTC head on the transcript: from scratch, it teaches the encoder words.

A Wav2Vec2 trained from random weights on intent labels alone sits at chance for thousands of
steps and then memorises whole sentences; it has nothing that says "these sounds are the word
*balance*". The corpus knows what every clip says, so during training a CTC head on the last
hidden layer gets that as a second loss, spelled in characters or in phonemes (espeak-ng's
reading of the text: English spelling is a poor guide to sound). Only the classifier is saved:
the head is a training aid, and the checkpoint stays a plain `Wav2Vec2ForSequenceClassification`.

A second, optional aid (`words_weight`) works on what the classifier itself reads: from the
pooled vector its last layer sees, a linear head predicts which words the transcript holds (a bag
of words, hashed into WORD_BUCKETS). New phrasings of an intent share its words, not its sentences,
so a pooled vector that must say which words were spoken is one a linear classifier can reuse.
"""

from __future__ import annotations

import os
import re
import string
import subprocess
import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
from torch import nn

from intentd.errors import IntentdError
from intentd.speak import ESPEAK
from intentd_train.settings import CTC_UNITS

TEXT_COLUMNS = ("text", "transcription")  # our corpus's metadata.csv, MInDS-14
CHARSET = " " + string.ascii_lowercase + "'"
# The phonemes espeak-ng writes for American English (IPA, stress marks dropped), all 58 that
# the demo corpus's texts use. A text with another one trains the classifier only.
PHONEMES = (
    "n t aɪ k m ɪ d ə s æ l ɛ ɹ p h z ʌ ŋ iː ɐ oʊ w b ð uː eɪ aʊ f j θ v ɚ ɡ ɔ ɑːɹ ᵻ ɑː i "
    "ɜː ʊ ɔːɹ ʃ tʃ dʒ ɾ ɛɹ ɔː əl ɔɪ oːɹ ʊɹ ɪɹ iə oː aɪɚ ʒ n̩ ʔ"
).split()
PHONEME_VOICE = "en-us"
BLANK = 0  # CTC blank; a vocabulary's symbol i is token i + 1, and token 1 is the word break
WORD_BREAK = 1
WORD_BUCKETS = 4096  # the corpus has ~1,500 distinct words: few share a bucket
_DROP = re.compile(r"[,.?!;:\"()\-]")
_SPACES = re.compile(r"\s+")
_STRESS = str.maketrans("", "", "ˈˌ")


def vocabulary(units: str) -> tuple[str, ...]:
    """The CTC symbols for `units` (one of CTC_UNITS), the word break first."""
    if units not in CTC_UNITS:
        raise ValueError(f"units {units!r} is not one of {CTC_UNITS}")
    return tuple(CHARSET) if units == "characters" else (" ", *PHONEMES)


_TOKEN_IDS = {u: {s: i + 1 for i, s in enumerate(vocabulary(u))} for u in CTC_UNITS}


def encode(text: str, units: str = "characters") -> list[int] | None:
    """Token ids of `text` for CTC, or None when it holds something unspoken as written (digits)."""
    t = _SPACES.sub(" ", _DROP.sub(" ", text.lower())).strip()
    if not t or any(c not in CHARSET for c in t):
        return None
    symbols = list(t) if units == "characters" else phonemes(t)
    ids = _TOKEN_IDS[units]
    if any(s not in ids for s in symbols):
        return None
    return [ids[s] for s in symbols]


def encode_all(texts: list[str], units: str) -> list[list[int] | None]:
    """`encode` for many texts; phonemes run one espeak-ng per text, on every core."""
    if units == "characters":
        return [encode(t) for t in texts]
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        return list(pool.map(lambda t: encode(t, units), texts))


def phonemes(text: str) -> list[str]:
    """espeak-ng's American English phonemes for `text`, " " between words."""
    try:
        proc = subprocess.run(
            [ESPEAK, "-q", "--ipa", "--sep=_", "-v", PHONEME_VOICE, text],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
    except FileNotFoundError:
        hint = f"apt-get install {ESPEAK}"
        raise IntentdError(f"{ESPEAK} not found; phoneme transcripts need it ({hint})") from None
    if proc.returncode != 0:
        raise IntentdError(f"{ESPEAK} could not read {text!r}: {proc.stderr.strip()}")
    out: list[str] = []
    for word in proc.stdout.translate(_STRESS).split():  # clause breaks are newlines
        out += [" "] if out else []
        out += [p for p in word.split("_") if p]
    return out


def word_bag(transcript: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """(N, WORD_BUCKETS) multi-hot: the words of each padded transcript row, hashed; any units."""
    bag = torch.zeros(len(lengths), WORD_BUCKETS)
    for row, (ids, n) in enumerate(zip(transcript.tolist(), lengths.tolist(), strict=True)):
        words = bytes(ids[:n]).split(bytes([WORD_BREAK]))  # every vocabulary has < 256 symbols
        bag[row, [zlib.crc32(w) % WORD_BUCKETS for w in words if w]] = 1.0
    return bag


class WithTranscriptHead(nn.Module):
    """The classifier plus a CTC head (and a word-bag head); `forward` sums the losses as one."""

    def __init__(
        self, classifier: Any, ctc_weight: float, units: str = "characters", words_weight: float = 0.0
    ) -> None:
        super().__init__()
        self.classifier = classifier
        self.ctc_weight = ctc_weight
        self.ctc_head = nn.Linear(classifier.config.hidden_size, len(vocabulary(units)) + 1)
        self.words_weight = words_weight
        self.words_head = None
        self._pooled: torch.Tensor | None = None
        if words_weight > 0:
            self.words_head = nn.Linear(classifier.classifier.in_features, WORD_BUCKETS)
            classifier.classifier.register_forward_pre_hook(self._keep_pooled)

    def _keep_pooled(self, _module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        self._pooled = args[0]

    def forward(
        self,
        input_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        transcript: torch.Tensor | None = None,
        transcript_lengths: torch.Tensor | None = None,
    ) -> Any:
        """Intent logits; with labels, loss = intent CE + ctc_weight * transcript CTC
        (+ words_weight * the word-bag cross-entropy per word the transcript holds)."""
        keep = None if transcript_lengths is None else (transcript_lengths > 0).nonzero().squeeze(1)
        with_ctc = transcript is not None and keep is not None and keep.numel() > 0
        out = self.classifier(
            input_values,
            attention_mask=attention_mask,
            labels=labels,
            output_hidden_states=with_ctc,
        )
        pooled, self._pooled = self._pooled, None
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
        if self.words_head is not None and pooled is not None:
            bag = word_bag(transcript[keep], transcript_lengths[keep]).to(pooled.device)
            logits = self.words_head(pooled[keep]).float()
            bce = nn.functional.binary_cross_entropy_with_logits(logits, bag, reduction="none")
            # Per word the clip holds, as the CTC loss is per symbol: a weight of 1 sits near
            # the intent loss once the head has learnt that most buckets are empty.
            words = (bce.sum(-1) / bag.sum(-1)).mean()
            out.loss = out.loss + self.words_weight * words
        out.hidden_states = None
        return out
