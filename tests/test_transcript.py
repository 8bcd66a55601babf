"""The auxiliary transcript CTC head used when training from scratch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from transformers import AutoFeatureExtractor, AutoModelForAudioClassification

from intentd_train.augment import Collator
from intentd_train.transcript import CHARSET, PHONEMES, WithTranscriptHead, encode, encode_all, vocabulary


def test_encode_spells_text_and_refuses_digits() -> None:
    ids = encode("Hi, what's my BALANCE?")
    assert ids is not None
    assert "".join(CHARSET[i - 1] for i in ids) == "hi what's my balance"
    assert 0 not in ids  # 0 is the CTC blank
    assert encode("send 600 pounds") is None  # spoken as words, written as digits
    assert encode(" ,. ") is None


def test_phonemes_are_espeak_ngs_reading_with_word_breaks() -> None:
    ids = encode("Check my BALANCE, please.", "phonemes")
    assert ids is not None
    spoken = "".join(vocabulary("phonemes")[i - 1] for i in ids)
    assert spoken == "tʃɛk maɪ bæləns pliːz"  # stress marks dropped, "_" separators gone
    assert ids.count(1) == 3  # token 1 is the word break in both vocabularies
    assert encode("send 600 pounds", "phonemes") is None  # the same rule as characters
    assert encode_all(["hi", "send 600"], "phonemes") == [encode("hi", "phonemes"), None]
    assert len(set(PHONEMES)) == len(PHONEMES)


def _batch(tiny_model: Path, texts: list[str | None], max_length_s: float = 10.0) -> dict:
    extractor = AutoFeatureExtractor.from_pretrained(str(tiny_model))
    rng = np.random.default_rng(0)
    features = [
        {"input_values": rng.standard_normal(16000 + 4000 * i).astype(np.float32), "label": i,
         "transcript": encode(t) if t else []}
        for i, t in enumerate(texts)
    ]  # fmt: skip
    return Collator(extractor, max_length_s)(features)


def test_ctc_adds_to_the_intent_loss_and_trains_the_head(tiny_model: Path) -> None:
    classifier = AutoModelForAudioClassification.from_pretrained(str(tiny_model))
    model = WithTranscriptHead(classifier, ctc_weight=1.0)
    batch = _batch(tiny_model, ["check my balance", None, "freeze my card"])
    assert batch["transcript_lengths"].tolist() == [16, 0, 14]
    with_text = model(**batch)
    plain = classifier(batch["input_values"], attention_mask=batch["attention_mask"], labels=batch["labels"])
    assert with_text.loss > plain.loss
    torch.testing.assert_close(with_text.logits, plain.logits)
    with_text.loss.backward()
    assert model.ctc_head.weight.grad is not None and model.ctc_head.weight.grad.abs().sum() > 0


def test_a_phoneme_head_has_one_output_per_phoneme_and_the_blank(tiny_model: Path) -> None:
    classifier = AutoModelForAudioClassification.from_pretrained(str(tiny_model))
    model = WithTranscriptHead(classifier, ctc_weight=1.0, units="phonemes")
    assert model.ctc_head.out_features == len(PHONEMES) + 2  # + the word break and the blank
    extractor = AutoFeatureExtractor.from_pretrained(str(tiny_model))
    wave = np.random.default_rng(0).standard_normal(24000).astype(np.float32)
    features = [{"input_values": wave, "label": 0, "transcript": encode("freeze my card", "phonemes")}]
    batch = Collator(extractor, 10.0)(features)
    plain = classifier(batch["input_values"], attention_mask=batch["attention_mask"], labels=batch["labels"])
    loss = model(**batch).loss
    assert torch.isfinite(loss) and loss > plain.loss  # the phoneme CTC term is there


def test_clips_cut_short_or_without_text_add_no_ctc(tiny_model: Path) -> None:
    classifier = AutoModelForAudioClassification.from_pretrained(str(tiny_model))
    model = WithTranscriptHead(classifier, ctc_weight=1.0)
    # Cut at 1.1 s: the 1.25 s and 1.5 s clips lose their ends and so their transcripts.
    batch = _batch(tiny_model, [None, "check my balance", "freeze my card"], max_length_s=1.1)
    assert batch["transcript_lengths"].tolist() == [0, 0, 0]
    plain = classifier(batch["input_values"], attention_mask=batch["attention_mask"], labels=batch["labels"])
    torch.testing.assert_close(model(**batch).loss, plain.loss)
